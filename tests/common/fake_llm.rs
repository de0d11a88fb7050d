//! A local LLM server speaking OpenAI's and Anthropic's real wire formats: every request is
//! recorded, and a test's responder decides each answer, delay and error.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `POST /v1/chat/completions`.
    OpenAi,
    /// `POST /v1/messages`.
    Anthropic,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// When it arrived.
    pub at: Instant,
    /// Which endpoint it came to.
    pub wire: Wire,
    /// Its headers, as sent.
    pub headers: HeaderMap,
    /// The JSON body (`Null` if it was not JSON).
    pub body: Value,
    /// 0 for the first request this fake received.
    pub index: usize,
}

impl Recorded {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The system prompt: OpenAI's `system` message or Anthropic's top-level `system`.
    pub fn system(&self) -> Option<String> {
        match self.wire {
            Wire::OpenAi => self
                .messages()
                .iter()
                .find(|m| m["role"] == "system")
                .and_then(|m| m["content"].as_str().map(str::to_owned)),
            Wire::Anthropic => match &self.body["system"] {
                Value::String(text) => Some(text.clone()),
                Value::Array(blocks) => {
                    Some(blocks.iter().filter_map(|b| b["text"].as_str()).collect())
                }
                _ => None,
            },
        }
    }

    /// The text of the last user message.
    pub fn last_user_text(&self) -> Option<String> {
        let message = self.messages().iter().rev().find(|m| m["role"] == "user")?;
        match &message["content"] {
            Value::String(text) => Some(text.clone()),
            Value::Array(parts) => Some(parts.iter().filter_map(|p| p["text"].as_str()).collect()),
            _ => None,
        }
    }

    /// OpenAI's `json_schema` name, or the tool Anthropic is forced to call.
    pub fn schema_name(&self) -> Option<String> {
        let name = match self.wire {
            Wire::OpenAi => &self.body["response_format"]["json_schema"]["name"],
            Wire::Anthropic if self.body["tool_choice"]["type"] == "tool" => {
                &self.body["tool_choice"]["name"]
            }
            Wire::Anthropic => &Value::Null,
        };
        name.as_str().map(str::to_owned)
    }

    /// Whether the conversation carries an earlier answer of the model (a re-ask).
    pub fn has_assistant_turn(&self) -> bool {
        self.messages().iter().any(|m| m["role"] == "assistant")
    }

    fn messages(&self) -> &[Value] {
        self.body["messages"].as_array().map_or(&[], Vec::as_slice)
    }
}

/// What the fake answers to one request.
#[derive(Debug, Clone)]
pub struct FakeReply {
    kind: ReplyKind,
    tokens: (u64, u64),
    delay: Duration,
    model: Option<String>,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
enum ReplyKind {
    Answer(String),
    Error {
        status: u16,
        kind: String,
        message: String,
        code: Option<String>,
    },
    Status(u16, Value),
    Raw(u16, String),
    RejectJsonSchema,
}

impl FakeReply {
    fn of(kind: ReplyKind) -> Self {
        Self {
            kind,
            tokens: (11, 7),
            delay: Duration::ZERO,
            model: None,
            headers: Vec::new(),
        }
    }

    /// A completion in the wire format of the endpoint called. Anthropic with a forced
    /// tool gets a `tool_use` block whose input is `text` parsed (a text block if it is not
    /// a JSON object).
    pub fn answer(text: impl Into<String>) -> Self {
        Self::of(ReplyKind::Answer(text.into()))
    }

    /// An error in the endpoint's own shape: OpenAI's `{"error":{message,type,param,code}}`
    /// or Anthropic's `{"type":"error","error":{type,message}}`.
    pub fn error(status: u16, kind: &str, message: &str) -> Self {
        Self::of(ReplyKind::Error {
            status,
            kind: kind.to_owned(),
            message: message.to_owned(),
            code: None,
        })
    }

    /// Any status with this JSON body, whichever endpoint was called.
    pub fn status(status: u16, body: Value) -> Self {
        Self::of(ReplyKind::Status(status, body))
    }

    /// Any status with this body as plain text (garbage on purpose).
    pub fn raw(status: u16, body: &str) -> Self {
        Self::of(ReplyKind::Raw(status, body.to_owned()))
    }

    /// OpenAI's real 400 for a model without `json_schema` response formats.
    pub fn reject_json_schema() -> Self {
        Self::of(ReplyKind::RejectJsonSchema)
    }

    /// OpenAI's `error.code` (for `error`).
    pub fn code(mut self, code: &str) -> Self {
        if let ReplyKind::Error { code: slot, .. } = &mut self.kind {
            *slot = Some(code.to_owned());
        }
        self
    }

    /// The tokens reported (11 in, 7 out unless set).
    pub fn tokens(mut self, input: u64, output: u64) -> Self {
        self.tokens = (input, output);
        self
    }

    /// The model named in the reply (the request's unless set).
    pub fn model(mut self, model: &str) -> Self {
        self.model = Some(model.to_owned());
        self
    }

    /// Waits this long before answering.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// Decides the answer to each request.
pub type Responder = Arc<dyn Fn(&Recorded) -> FakeReply + Send + Sync>;

struct Shared {
    responder: Responder,
    requests: Mutex<Vec<Recorded>>,
}

/// A running fake; it stops when dropped.
pub struct FakeLlm {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeLlm {
    /// Serves on a free loopback port, on the current tokio runtime.
    pub fn start(responder: Responder) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();

        let shared = Arc::new(Shared {
            responder,
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// A fake that answers every request with `text`.
    pub fn answering(text: &str) -> Self {
        let text = text.to_owned();
        Self::start(Arc::new(move |_| FakeReply::answer(text.clone())))
    }

    /// `http://127.0.0.1:PORT/v1`, the OpenAI base URL.
    pub fn base_url_openai(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1`, the Anthropic base URL.
    pub fn base_url_anthropic(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request so far, oldest first; a request is recorded on arrival, before any
    /// delay of its reply.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// How many requests came.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    respond(&shared, Wire::OpenAi, headers, &body).await
}

async fn anthropic(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    respond(&shared, Wire::Anthropic, headers, &body).await
}

async fn respond(shared: &Shared, wire: Wire, headers: HeaderMap, body: &[u8]) -> Response {
    let recorded = {
        let mut requests = shared.requests.lock().unwrap();
        let recorded = Recorded {
            at: Instant::now(),
            wire,
            headers,
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            index: requests.len(),
        };
        requests.push(recorded.clone());
        recorded
    };
    let reply = (shared.responder)(&recorded);
    tokio::time::sleep(reply.delay).await;

    let (status, body) = match &reply.kind {
        ReplyKind::Answer(text) => (200, answer_body(&recorded, &reply, text).to_string()),
        ReplyKind::Error {
            status,
            kind,
            message,
            code,
        } => (
            *status,
            error_body(wire, kind, message, code.as_deref()).to_string(),
        ),
        ReplyKind::Status(status, body) => (*status, body.to_string()),
        ReplyKind::Raw(status, body) => (*status, body.clone()),
        ReplyKind::RejectJsonSchema => (400, reject_json_schema_body().to_string()),
    };
    let mut response = (StatusCode::from_u16(status).unwrap(), body).into_response();
    let content_type = if matches!(reply.kind, ReplyKind::Raw(..)) {
        "text/plain"
    } else {
        "application/json"
    };
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static(content_type));
    for (name, value) in &reply.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
        response
            .headers_mut()
            .append(name, HeaderValue::from_str(value).unwrap());
    }
    response
}

fn answer_body(request: &Recorded, reply: &FakeReply, text: &str) -> Value {
    let model = reply
        .model
        .clone()
        .unwrap_or_else(|| request.body["model"].as_str().unwrap_or("fake").to_owned());
    let (input, output) = reply.tokens;
    match request.wire {
        Wire::OpenAi => json!({
            "id": format!("chatcmpl-fake{}", request.index),
            "object": "chat.completion",
            "created": SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": text, "refusal": null },
                "finish_reason": "stop",
            }],
            "usage": {
                "prompt_tokens": input,
                "completion_tokens": output,
                "total_tokens": input + output,
            },
        }),
        Wire::Anthropic => {
            let tool = request.schema_name();
            let input_json = serde_json::from_str::<Value>(text)
                .ok()
                .filter(Value::is_object);
            let (content, stop_reason) = match (tool, input_json) {
                (Some(name), Some(input_json)) => (
                    json!([{
                        "type": "tool_use",
                        "id": format!("toolu_fake{}", request.index),
                        "name": name,
                        "input": input_json,
                    }]),
                    "tool_use",
                ),
                _ => (json!([{ "type": "text", "text": text }]), "end_turn"),
            };
            json!({
                "id": format!("msg_fake{}", request.index),
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": null,
                "usage": { "input_tokens": input, "output_tokens": output },
            })
        }
    }
}

fn error_body(wire: Wire, kind: &str, message: &str, code: Option<&str>) -> Value {
    match wire {
        Wire::OpenAi => {
            json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
        }
        Wire::Anthropic => {
            json!({ "type": "error", "error": { "type": kind, "message": message } })
        }
    }
}

fn reject_json_schema_body() -> Value {
    json!({ "error": {
        "message": "Invalid parameter: 'response_format' of type 'json_schema' is not supported \
                    with this model.",
        "type": "invalid_request_error",
        "param": "response_format",
        "code": null,
    } })
}
