//! The response object (`"object": "response"`), as `POST`, `GET` and the terminal events
//! answer it and as the stores keep it.
//!
//! Typed rather than a `serde_json::Value` tree: an unstreamed `/v1/responses` answer builds it
//! once and writes it once. Measured with callgrind (instructions per request, the bench's
//! `store: false` request against the bench mock, beside `/v1/chat/completions`, which forwards
//! the upstream's bytes): `/v1/responses` cost 59,700 more a request with the tree, 28,700
//! typed (with no input-item ids for an unstored response and no copies of the messages). The
//! output items stay JSON values (their shapes are many, and a stored response's items become
//! the next one's context as they are).
//!
//! Written as a body by sonic-rs rather than serde_json (the same serde `Serialize`): serde_json
//! escapes strings a byte at a time, about 13,000 instructions for the bench's 945-byte answer;
//! with sonic-rs (16 bytes at a time) the difference above is 22,800, and 18,900 with the keys
//! written as constants ([`ResponseObject::to_json`]).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use super::events::Item;
use crate::error::{ApiError, OpenAiError};

/// Where a response is: OpenAI's `status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    Queued,
    InProgress,
    Completed,
    Incomplete,
    Failed,
    Cancelled,
}

impl ResponseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Incomplete => "incomplete",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Completed, failed, cancelled or incomplete.
    pub fn ended(self) -> bool {
        !matches!(self, Self::Queued | Self::InProgress)
    }
}

/// OpenAI's `Response` (the fields this server answers; see `../shared/openai-schemas/`).
/// Every field but `id` and `status` has a default, so that a record written by an older
/// version still reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseObject {
    pub id: String,
    /// `"object": "response"`, always (written, never read).
    #[serde(serialize_with = "object_kind", skip_deserializing)]
    pub object: (),
    #[serde(default)]
    pub created_at: i64,
    pub status: ResponseStatus,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default)]
    pub error: Option<Value>,
    #[serde(default)]
    pub incomplete_details: Option<Value>,
    #[serde(default)]
    pub instructions: Option<String>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub output: Vec<Item>,
    #[serde(default = "yes")]
    pub parallel_tool_calls: bool,
    #[serde(default)]
    pub previous_response_id: Option<String>,
    #[serde(default = "yes")]
    pub store: bool,
    #[serde(default)]
    pub background: bool,
    #[serde(default = "one")]
    pub temperature: f64,
    #[serde(default = "one")]
    pub top_p: f64,
    #[serde(default)]
    pub tools: Vec<Value>,
    #[serde(default = "auto")]
    pub tool_choice: Value,
    #[serde(default = "no_metadata")]
    pub metadata: Value,
    /// `"text": {"format": {"type": "text"}}`: plain text answers only.
    #[serde(serialize_with = "text_format", skip_deserializing)]
    pub text: (),
    /// `"truncation": "disabled"` (a request's own `truncation` is accepted and ignored).
    #[serde(serialize_with = "disabled", skip_deserializing)]
    pub truncation: (),
    /// Set when the response ends with its work done (every model call of it summed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<ResponseUsage>,
}

impl ResponseObject {
    /// The object's JSON, as its `Serialize` writes it (a test holds the two equal), but
    /// written field by field: each key is a constant here, not escaped on every write (with
    /// the derive, a quarter of the answer's cost went to writing the 24 keys).
    pub fn to_json(&self) -> Result<Vec<u8>, sonic_rs::Error> {
        // Every field named: a new one does not compile until it is written here too.
        let Self {
            id,
            object: (),
            created_at,
            status,
            completed_at,
            error,
            incomplete_details,
            instructions,
            max_output_tokens,
            model,
            output,
            parallel_tool_calls,
            previous_response_id,
            store,
            background,
            temperature,
            top_p,
            tools,
            tool_choice,
            metadata,
            text: (),
            truncation: (),
            usage,
        } = self;
        let mut b = Body(Vec::with_capacity(1024));
        b.field("{\"id\":", id)?;
        b.constant(",\"object\":", OBJECT);
        b.field(",\"created_at\":", created_at)?;
        b.field(",\"status\":", status.as_str())?;
        b.field(",\"completed_at\":", completed_at)?;
        b.field(",\"error\":", error)?;
        b.field(",\"incomplete_details\":", incomplete_details)?;
        b.field(",\"instructions\":", instructions)?;
        b.field(",\"max_output_tokens\":", max_output_tokens)?;
        b.field(",\"model\":", model)?;
        b.field(",\"output\":", output)?;
        b.flag(",\"parallel_tool_calls\":", *parallel_tool_calls);
        b.field(",\"previous_response_id\":", previous_response_id)?;
        b.flag(",\"store\":", *store);
        b.flag(",\"background\":", *background);
        b.field(",\"temperature\":", temperature)?;
        b.field(",\"top_p\":", top_p)?;
        b.field(",\"tools\":", tools)?;
        b.field(",\"tool_choice\":", tool_choice)?;
        b.field(",\"metadata\":", metadata)?;
        b.constant(",\"text\":", TEXT);
        b.constant(",\"truncation\":", TRUNCATION);
        if let Some(u) = usage {
            b.field(",\"usage\":", u)?;
        }
        b.0.push(b'}');
        Ok(b.0)
    }
}

/// A JSON object being written.
struct Body(Vec<u8>);

impl Body {
    /// `key` (the separator, the quoted name and the colon) and the value's JSON.
    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> sonic_rs::Result<()> {
        self.0.extend_from_slice(key.as_bytes());
        sonic_rs::to_writer(&mut self.0, value)
    }

    /// `key` and JSON text written as it is.
    fn constant(&mut self, key: &str, json: &str) {
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(json.as_bytes());
    }

    fn flag(&mut self, key: &str, value: bool) {
        self.0.extend_from_slice(key.as_bytes());
        self.0
            .extend_from_slice(if value { b"true" } else { b"false" });
    }
}

/// The object as a JSON body.
impl IntoResponse for ResponseObject {
    fn into_response(self) -> Response {
        match self.to_json() {
            Ok(body) => {
                let json = HeaderValue::from_static("application/json");
                ([(header::CONTENT_TYPE, json)], body).into_response()
            }
            Err(e) => OpenAiError(ApiError::Internal(format!(
                "cannot write the response object: {e}"
            )))
            .into_response(),
        }
    }
}

/// The fields whose value never changes, as [`ResponseObject::to_json`] writes them (the
/// functions below write the same for the derive; a test holds the two equal).
const OBJECT: &str = r#""response""#;
const TEXT: &str = r#"{"format":{"type":"text"}}"#;
const TRUNCATION: &str = r#""disabled""#;

fn object_kind<S: Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("response")
}

fn disabled<S: Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("disabled")
}

fn text_format<S: Serializer>(_: &(), s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Format {
        #[serde(rename = "type")]
        kind: &'static str,
    }
    #[derive(Serialize)]
    struct Text {
        format: Format,
    }
    Text {
        format: Format { kind: "text" },
    }
    .serialize(s)
}

fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn auto() -> Value {
    Value::from("auto")
}
fn no_metadata() -> Value {
    Value::Object(serde_json::Map::new())
}
/// The usage of a response, in the Responses API's shape ([`super::translate::usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResponseUsage {
    pub input_tokens: u64,
    #[serde(default)]
    pub input_tokens_details: InputTokensDetails,
    pub output_tokens: u64,
    #[serde(default)]
    pub output_tokens_details: OutputTokensDetails,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct InputTokensDetails {
    pub cached_tokens: u64,
    #[serde(default)]
    pub cache_write_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct OutputTokensDetails {
    pub reasoning_tokens: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_record_of_only_id_and_status_reads_with_defaults_and_writes_back() {
        let r: ResponseObject =
            serde_json::from_value(json!({"id": "resp_1", "status": "in_progress"})).unwrap();
        assert_eq!(r.status, ResponseStatus::InProgress);
        assert!(!r.status.ended());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["object"], "response");
        assert_eq!(v["text"], json!({"format": {"type": "text"}}));
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["error"], Value::Null);
        assert!(v.get("usage").is_none());
        let back: ResponseObject = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[tokio::test]
    async fn the_body_is_the_json_serde_writes() {
        let mut r: ResponseObject = serde_json::from_value(json!({"id": "resp_\"1",
            "status": "completed", "temperature": 0.7, "metadata": {"k": "v\"\u{1}\n é"},
            "instructions": "be \\ brief", "model": "m/\u{7f}", "completed_at": 5,
            "error": {"code": "x"}, "max_output_tokens": 9, "previous_response_id": "resp_0",
            "tools": [{"type": "function", "name": "f"}], "tool_choice": "required",
            "output": [{"type": "message", "content": [{"type": "output_text",
                "text": "tab\there \\ \u{2028} 😀"}]}]}))
        .unwrap();
        for usage in [None, Some(ResponseUsage::default())] {
            r.usage = usage;
            // The same bytes (serde_json's map keys are sorted; these are in field order).
            let expected = serde_json::to_string(&r).unwrap();
            assert_eq!(String::from_utf8(r.to_json().unwrap()).unwrap(), expected);
        }
        let res = r.clone().into_response();
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let got: ResponseObject = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, r);
    }
}
