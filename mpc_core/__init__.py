"""secp-tuning's MPC engine: ring Z_2^64 fixed point, the 2pc and 3pc suites, nonlinear functions, layers."""

import warnings

# Ring arithmetic wraps modulo 2^64 on purpose.  numpy checks overflow only for 0-d (scalar) integer
# operations and warns there; in the engine's own modules that wrap-around is the intended reduction.
warnings.filterwarnings(
    "ignore",
    message="overflow encountered in scalar",
    category=RuntimeWarning,
    module=r"mpc_core\.(ring|tensor|suites\.\w+)$",
)
