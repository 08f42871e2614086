"""The data owner: few-shot tasks, forward-only prompt tuning with CMA-ES, runs and the ``secp-tune`` CLI.

The data owner holds its labelled examples, the templates, the CMA-ES state and the tuned prompt; it never
holds the model past the public embedding layer.  It learns one loss per candidate prompt in training and the
verbalizer logits of its own examples in evaluation, nothing else (DESIGN.md §1-2).

Modules: :mod:`.task` (task specs and templates), :mod:`.data` (loading, validation, k-shot sampling),
:mod:`.encode` (tokenising and the public embedding layer), :mod:`.oracle` (the ``LossOracle`` interface),
:mod:`.backends` (plain and secure oracles), :mod:`.projection` (p = A z + p0), :mod:`.tuner` (the CMA-ES
loop), :mod:`.checkpoint` (atomic files), :mod:`.runfolder` (run layout), :mod:`.report` (report and plots),
:mod:`.cli` (click commands).
"""
