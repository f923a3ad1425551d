//! The OpenAI Responses API on the same engine (API.md, "OpenAI Responses API"; issue 18).
//! [`translate`] is its translation to and from Chat Completions, as pure functions; the routes,
//! stored responses and streamed events are issue 18's next steps.

pub mod translate;
