//! Fake ollama server (see the module docs of `fake`).
