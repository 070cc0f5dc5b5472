//! Fake openai server (see the module docs of `fake`).
