//! Fake search server (see the module docs of `fake`).
