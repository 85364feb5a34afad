//! SSE/SSE2 instructions (moves, integer, logic, scalar and packed floating point).
