//! Protocol-faithful fake servers for the outside world the workers talk to:
//! OpenAI-compatible chat completions, Ollama, search engines and web pages.
//! Each records what it received so tests can assert what our code *sends*.

pub mod ollama;
pub mod openai;
pub mod search;
