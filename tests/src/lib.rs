//! End-to-end scenarios: each file in `tests/tests/` starts Crossway's binaries as separate
//! processes and checks what they do from the outside.

#![forbid(unsafe_code)]
