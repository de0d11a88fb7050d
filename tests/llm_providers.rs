//! The OpenAI and Anthropic clients against a local fake speaking both wire formats: what
//! goes on the wire, what is read back, and how each failure is classified.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_llm::{FakeLlm, FakeReply, Recorded, Wire};
use nurture::ai::anthropic::AnthropicProvider;
use nurture::ai::openai::{ApiKeyHeader, OpenAiProvider};
use nurture::ai::provider::{
    ChatMessage, ChatReply, ChatRequest, LlmProvider, OutputSchema, ProviderError, Role, Usage,
};
use serde_json::{Value, json};

const KEY: &str = "sk-test-4f9c2e7a1b8d";
const SYSTEM: &str = "You score sales leads for a retail bank. Answer in JSON.";
const PROMPT: &str = "Lead: Jane Roe, CFO at Acme Corp, asked for a demo of term deposits";

fn schema() -> OutputSchema {
    OutputSchema {
        name: "lead_score".to_owned(),
        schema: json!({
            "type": "object",
            "properties": { "score": { "type": "integer" } },
            "required": ["score"],
            "additionalProperties": false,
        }),
    }
}

fn request(schema: Option<OutputSchema>) -> ChatRequest {
    ChatRequest {
        model: "test-model".to_owned(),
        system: SYSTEM.to_owned(),
        messages: vec![ChatMessage {
            role: Role::User,
            content: PROMPT.to_owned(),
        }],
        schema,
        max_tokens: 321,
        temperature: 0.0,
    }
}

fn replying(reply: FakeReply) -> FakeLlm {
    FakeLlm::start(Arc::new(move |_: &Recorded| reply.clone()))
}

fn openai(fake: &FakeLlm) -> OpenAiProvider {
    OpenAiProvider::new(
        &fake.base_url_openai(),
        Some(KEY.to_owned()),
        ApiKeyHeader::Authorization,
    )
    .unwrap()
}

fn anthropic(fake: &FakeLlm) -> AnthropicProvider {
    AnthropicProvider::new(&fake.base_url_anthropic(), Some(KEY.to_owned())).unwrap()
}

async fn openai_error(reply: FakeReply) -> ProviderError {
    let fake = replying(reply);
    let error = openai(&fake)
        .chat(&request(Some(schema())))
        .await
        .unwrap_err();
    assert_eq!(fake.count(), 1, "one HTTP call, no retry");
    error
}

async fn anthropic_error(reply: FakeReply) -> ProviderError {
    let fake = replying(reply);
    let error = anthropic(&fake)
        .chat(&request(Some(schema())))
        .await
        .unwrap_err();
    assert_eq!(fake.count(), 1, "one HTTP call, no retry");
    error
}

/// The one request a fake received.
fn only_request(fake: &FakeLlm) -> Recorded {
    let mut requests = fake.requests();
    assert_eq!(requests.len(), 1);
    requests.remove(0)
}

// ---- OpenAI: the request ----

#[tokio::test]
async fn openai_sends_the_bearer_key_the_system_prompt_first_and_max_tokens() {
    let fake = FakeLlm::answering("hello");

    openai(&fake).chat(&request(None)).await.unwrap();

    let sent = only_request(&fake);
    assert_eq!(sent.wire, Wire::OpenAi);
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent.header("api-key"), None);
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(
        sent.header("user-agent"),
        Some(concat!("nurture/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(
        sent.body,
        json!({
            "model": "test-model",
            "messages": [
                { "role": "system", "content": SYSTEM },
                { "role": "user", "content": PROMPT },
            ],
            "max_tokens": 321,
            "temperature": 0.0,
        })
    );
    assert_eq!(sent.system().as_deref(), Some(SYSTEM));
    assert_eq!(sent.schema_name(), None);
}

#[tokio::test]
async fn openai_asks_for_a_strict_json_schema_when_the_request_has_one() {
    let fake = FakeLlm::answering(r#"{"score":72}"#);

    openai(&fake).chat(&request(Some(schema()))).await.unwrap();

    let sent = only_request(&fake);
    let expected = json!({
        "type": "json_schema",
        "json_schema": { "name": "lead_score", "schema": schema().schema, "strict": true },
    });
    assert_eq!(sent.body["response_format"], expected);
    assert_eq!(sent.schema_name().as_deref(), Some("lead_score"));
}

#[tokio::test]
async fn the_azure_api_key_header_replaces_authorization() {
    let fake = FakeLlm::answering("hello");
    let provider = OpenAiProvider::new(
        &fake.base_url_openai(),
        Some(KEY.to_owned()),
        ApiKeyHeader::ApiKey,
    )
    .unwrap();

    provider.chat(&request(None)).await.unwrap();

    let sent = only_request(&fake);
    assert_eq!(sent.header("api-key"), Some(KEY));
    assert_eq!(sent.header("authorization"), None);
}

#[tokio::test]
async fn a_server_without_a_key_gets_no_auth_header() {
    let fake = FakeLlm::answering("hello");
    let url = format!("{}/", fake.base_url_openai());
    let provider = OpenAiProvider::new(&url, None, ApiKeyHeader::Authorization).unwrap();

    let reply = provider.chat(&request(None)).await.unwrap();

    let sent = only_request(&fake);
    assert_eq!(
        reply.text, "hello",
        "a trailing slash in the base URL is tolerated"
    );
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.header("api-key"), None);
}

#[tokio::test]
async fn a_reask_keeps_the_earlier_answer_as_an_assistant_turn_for_both_vendors() {
    let fake = FakeLlm::answering(r#"{"score":40}"#);
    let mut reask = request(Some(schema()));
    reask.messages.push(ChatMessage {
        role: Role::Assistant,
        content: "score: high".into(),
    });
    reask.messages.push(ChatMessage {
        role: Role::User,
        content: "Answer in JSON only.".into(),
    });

    openai(&fake).chat(&reask).await.unwrap();
    anthropic(&fake).chat(&reask).await.unwrap();

    let sent = fake.requests();
    let conversation = json!([
        { "role": "user", "content": PROMPT },
        { "role": "assistant", "content": "score: high" },
        { "role": "user", "content": "Answer in JSON only." },
    ]);
    assert_eq!(
        sent[0].body["messages"].as_array().unwrap()[1..],
        conversation.as_array().unwrap()[..]
    );
    assert_eq!(sent[1].body["messages"], conversation);
    assert!(sent.iter().all(Recorded::has_assistant_turn));
    assert_eq!(
        sent[1].last_user_text().as_deref(),
        Some("Answer in JSON only.")
    );
}

// ---- OpenAI: the reply ----

#[tokio::test]
async fn openai_reply_text_model_and_usage_are_read() {
    let reply = FakeReply::answer(r#"{"score":72}"#)
        .tokens(120, 34)
        .model("gpt-4o-mini-2024-07-18");
    let fake = replying(reply);

    let reply = openai(&fake).chat(&request(Some(schema()))).await.unwrap();

    let expected = ChatReply {
        text: r#"{"score":72}"#.to_owned(),
        model: "gpt-4o-mini-2024-07-18".to_owned(),
        usage: Usage {
            input_tokens: 120,
            output_tokens: 34,
        },
    };
    assert_eq!(reply, expected);
}

#[tokio::test]
async fn a_reply_without_usage_counts_zero_tokens() {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "llama3.1:8b",
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": "hi" },
            "finish_reason": "stop",
        }],
    });
    let fake = replying(FakeReply::status(200, body));

    let reply = openai(&fake).chat(&request(None)).await.unwrap();

    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 0,
            output_tokens: 0
        }
    );
    assert_eq!(
        (reply.text.as_str(), reply.model.as_str()),
        ("hi", "llama3.1:8b")
    );
}

#[tokio::test]
async fn null_content_and_refusals_are_bad_replies() {
    let choice = |message: Value| {
        let choice = json!({ "index": 0, "message": message, "finish_reason": "length" });
        json!({ "model": "m", "choices": [choice] })
    };
    let null = choice(json!({ "role": "assistant", "content": null, "refusal": null }));
    let refused = choice(
        json!({ "role": "assistant", "content": null, "refusal": "I can't help with Jane Roe." }),
    );
    let no_choices = json!({ "model": "m", "choices": [] });

    let null = openai_error(FakeReply::status(200, null)).await;
    let refused = openai_error(FakeReply::status(200, refused)).await;
    let no_choices = openai_error(FakeReply::status(200, no_choices)).await;

    assert_eq!(
        null,
        ProviderError::BadReply("the reply has no content (finish_reason length)".into())
    );
    assert_eq!(
        refused,
        ProviderError::BadReply("the model refused to answer".into())
    );
    assert_eq!(
        no_choices,
        ProviderError::BadReply("the reply has no choices".into())
    );
}

#[tokio::test]
async fn providers_wait_for_a_slow_reply_without_a_deadline_of_their_own() {
    let fake = replying(FakeReply::answer("late").delay(Duration::from_millis(300)));
    let started = std::time::Instant::now();

    let reply = openai(&fake).chat(&request(None)).await.unwrap();

    assert_eq!(reply.text, "late");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

// ---- OpenAI: the json_schema fallback ----

#[tokio::test]
async fn a_server_lacking_json_schema_falls_back_to_json_object_once_and_remembers() {
    let fake = FakeLlm::start(Arc::new(|sent: &Recorded| {
        if sent.body["response_format"]["type"] == "json_schema" {
            FakeReply::reject_json_schema()
        } else {
            FakeReply::answer(format!(r#"{{"score":{}}}"#, 50 + sent.index))
        }
    }));
    let provider = openai(&fake);

    let first = provider.chat(&request(Some(schema()))).await.unwrap();
    let second = provider.chat(&request(Some(schema()))).await.unwrap();

    let formats: Vec<Value> = fake
        .requests()
        .iter()
        .map(|r| r.body["response_format"].clone())
        .collect();
    let json_object = json!({ "type": "json_object" });
    assert_eq!(formats[0]["type"], "json_schema");
    assert_eq!(formats[1..], [json_object.clone(), json_object]);
    assert_eq!(
        (first.text.as_str(), second.text.as_str()),
        (r#"{"score":51}"#, r#"{"score":52}"#)
    );
}

#[tokio::test]
async fn the_fallback_does_not_touch_requests_without_a_schema() {
    let fake = FakeLlm::start(Arc::new(|sent: &Recorded| match sent.index {
        0 => FakeReply::reject_json_schema(),
        _ => FakeReply::answer("free text"),
    }));
    let provider = openai(&fake);

    provider.chat(&request(Some(schema()))).await.unwrap();
    let free = provider.chat(&request(None)).await.unwrap();

    let sent = fake.requests();
    assert_eq!(free.text, "free text");
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2].body.get("response_format"), None);
}

#[tokio::test]
async fn an_invalid_schema_is_rejected_without_falling_back() {
    let message = "Invalid schema for response_format 'lead_score': In context=(), \
                   'additionalProperties' is required to be supplied and to be false.";
    let reply = FakeReply::error(400, "invalid_request_error", message);

    let error = openai_error(reply).await;

    let ProviderError::Rejected(detail) = error else {
        panic!("{error:?}")
    };
    assert!(
        detail.starts_with("status 400 invalid_request_error: Invalid schema"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_json_object_server_refusing_again_is_rejected_after_one_fallback() {
    let fake = replying(FakeReply::reject_json_schema());

    let error = openai(&fake)
        .chat(&request(Some(schema())))
        .await
        .unwrap_err();

    let ProviderError::Rejected(detail) = error else {
        panic!("{error:?}")
    };
    assert_eq!(fake.count(), 2);
    assert!(detail.contains("[response_format]"), "{detail}");
}

// ---- OpenAI: errors ----

#[tokio::test]
async fn openai_401_and_403_are_unauthorized() {
    let bad_key = FakeReply::error(
        401,
        "invalid_request_error",
        "Incorrect API key provided: sk-test-****8d.",
    )
    .code("invalid_api_key");
    let region = FakeReply::error(
        403,
        "request_forbidden",
        "Country, region, or territory not supported",
    );

    let bad_key = openai_error(bad_key).await;
    let region = openai_error(region).await;

    let expected = "status 401 invalid_request_error (invalid_api_key): \
                    Incorrect API key provided: sk-test-****8d.";
    assert_eq!(bad_key, ProviderError::Unauthorized(expected.into()));
    let ProviderError::Unauthorized(detail) = region else {
        panic!("{region:?}")
    };
    assert!(
        detail.starts_with("status 403 request_forbidden"),
        "{detail}"
    );
}

#[tokio::test]
async fn openai_429_waits_as_long_as_retry_after_says() {
    let reply = FakeReply::error(429, "requests", "Rate limit reached for gpt-4o-mini")
        .code("rate_limit_exceeded")
        .header("retry-after", "7")
        .header("x-ratelimit-reset-requests", "20s");

    let error = openai_error(reply).await;

    assert_eq!(
        error,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
}

#[tokio::test]
async fn openai_429_without_retry_after_waits_for_the_longest_reset() {
    let reply = FakeReply::error(429, "tokens", "Rate limit reached")
        .header("x-ratelimit-reset-requests", "1m30.5s")
        .header("x-ratelimit-reset-tokens", "6s");
    let bare = FakeReply::error(429, "tokens", "Rate limit reached");

    let error = openai_error(reply).await;
    let bare = openai_error(bare).await;

    assert_eq!(
        error,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_millis(90_500))
        }
    );
    assert_eq!(bare, ProviderError::RateLimited { retry_after: None });
}

#[tokio::test]
async fn openai_insufficient_quota_and_402_are_quota_exhausted() {
    let message = "You exceeded your current quota, please check your plan and billing details.";
    let by_code = FakeReply::error(429, "insufficient_quota", message).code("insufficient_quota");
    let by_type = FakeReply::error(429, "insufficient_quota", message).header("retry-after", "1");
    let payment = FakeReply::error(402, "billing", "Payment required");

    let by_code = openai_error(by_code).await;
    let by_type = openai_error(by_type).await;
    let payment = openai_error(payment).await;

    assert_eq!(
        by_code,
        ProviderError::QuotaExhausted(format!("status 429 insufficient_quota: {message}"))
    );
    assert_eq!(
        by_type,
        ProviderError::QuotaExhausted(format!("status 429 insufficient_quota: {message}"))
    );
    assert_eq!(
        payment,
        ProviderError::QuotaExhausted("status 402 billing: Payment required".into())
    );
}

#[tokio::test]
async fn openai_5xx_408_and_409_are_unavailable() {
    for status in [500, 502, 503, 408, 409] {
        let reply = FakeReply::error(status, "server_error", "The server had an error");

        let error = openai_error(reply).await;

        let expected = format!("status {status} server_error: The server had an error");
        assert_eq!(error, ProviderError::Unavailable(expected));
    }
}

#[tokio::test]
async fn openai_other_4xx_are_rejected() {
    let unknown_model = FakeReply::error(
        404,
        "invalid_request_error",
        "The model `gpt-9` does not exist",
    )
    .code("model_not_found");
    let too_long = FakeReply::error(
        400,
        "invalid_request_error",
        "This model's maximum context length is 128000 tokens.",
    )
    .code("context_length_exceeded");

    let unknown_model = openai_error(unknown_model).await;
    let too_long = openai_error(too_long).await;

    let expected =
        "status 404 invalid_request_error (model_not_found): The model `gpt-9` does not exist";
    assert_eq!(unknown_model, ProviderError::Rejected(expected.into()));
    assert!(
        matches!(too_long, ProviderError::Rejected(d) if d.contains("(context_length_exceeded)"))
    );
}

#[tokio::test]
async fn openai_unreadable_2xx_bodies_are_bad_replies() {
    let garbage = openai_error(FakeReply::raw(200, "<html>upstream hiccup</html>")).await;
    let wrong_shape = openai_error(FakeReply::status(200, json!({ "object": "list" }))).await;

    assert_eq!(
        garbage,
        ProviderError::BadReply(
            "not a chat completion: syntax error at '.' (line 1, column 1)".into()
        )
    );
    assert!(matches!(wrong_shape, ProviderError::BadReply(d) if d.contains("data error")));
}

#[tokio::test]
async fn a_closed_port_is_unavailable_for_both_vendors() {
    let url = format!("http://127.0.0.1:{}/v1", common::free_port());
    let openai = OpenAiProvider::new(&url, Some(KEY.into()), ApiKeyHeader::Authorization).unwrap();
    let anthropic = AnthropicProvider::new(&url, Some(KEY.into())).unwrap();

    let errors = [
        openai.chat(&request(None)).await.unwrap_err(),
        anthropic.chat(&request(None)).await.unwrap_err(),
    ];

    for error in errors {
        let ProviderError::Unavailable(detail) = &error else {
            panic!("{error:?}")
        };
        assert!(detail.starts_with("cannot connect"), "{detail}");
    }
}

#[tokio::test]
async fn base_urls_that_are_not_http_are_refused_at_construction() {
    let openai = OpenAiProvider::new("ftp://example.com/v1", None, ApiKeyHeader::Authorization);
    let anthropic = AnthropicProvider::new("api.anthropic.com", None);

    assert_eq!(
        openai.unwrap_err(),
        "invalid base_url 'ftp://example.com/v1': expected http or https"
    );
    assert!(
        anthropic
            .unwrap_err()
            .starts_with("invalid base_url 'api.anthropic.com'")
    );
}

// ---- Anthropic: the request and the reply ----

#[tokio::test]
async fn anthropic_sends_the_key_the_version_and_the_system_prompt_apart() {
    let fake = FakeLlm::answering("hello");

    anthropic(&fake).chat(&request(None)).await.unwrap();

    let sent = only_request(&fake);
    assert_eq!(sent.wire, Wire::Anthropic);
    assert_eq!(sent.header("x-api-key"), Some(KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("content-type"), Some("application/json"));
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(
        sent.body,
        json!({
            "model": "test-model",
            "max_tokens": 321,
            "temperature": 0.0,
            "system": SYSTEM,
            "messages": [{ "role": "user", "content": PROMPT }],
        })
    );
    assert_eq!(sent.schema_name(), None);
}

#[tokio::test]
async fn anthropic_forces_the_schema_tool_and_returns_its_input_as_json() {
    let fake = replying(
        FakeReply::answer(r#"{ "score": 72 }"#)
            .tokens(230, 41)
            .model("claude-x-20250101"),
    );

    let reply = anthropic(&fake)
        .chat(&request(Some(schema())))
        .await
        .unwrap();

    let sent = only_request(&fake);
    let tools = json!([{
        "name": "lead_score",
        "description": "Record the answer.",
        "input_schema": schema().schema,
    }]);
    assert_eq!(sent.body["tools"], tools);
    assert_eq!(
        sent.body["tool_choice"],
        json!({ "type": "tool", "name": "lead_score" })
    );
    assert_eq!(sent.schema_name().as_deref(), Some("lead_score"));
    let expected = ChatReply {
        text: r#"{"score":72}"#.to_owned(),
        model: "claude-x-20250101".to_owned(),
        usage: Usage {
            input_tokens: 230,
            output_tokens: 41,
        },
    };
    assert_eq!(reply, expected);
}

#[tokio::test]
async fn anthropic_text_blocks_are_joined_when_no_tool_was_called() {
    let body = json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
        "content": [
            { "type": "thinking", "thinking": "hmm", "signature": "s" },
            { "type": "text", "text": "{\"score\":" },
            { "type": "text", "text": "64}" },
        ],
        "stop_reason": "end_turn", "stop_sequence": null,
        "usage": { "input_tokens": 9, "output_tokens": 4 },
    });
    let fake = replying(FakeReply::status(200, body));

    let reply = anthropic(&fake)
        .chat(&request(Some(schema())))
        .await
        .unwrap();

    assert_eq!(reply.text, r#"{"score":64}"#);
    assert_eq!(
        reply.usage,
        Usage {
            input_tokens: 9,
            output_tokens: 4
        }
    );
}

#[tokio::test]
async fn anthropic_without_text_or_tool_is_a_bad_reply() {
    let body = json!({ "type": "message", "content": [], "stop_reason": "max_tokens" });
    let refusal =
        json!({ "type": "message", "model": "claude-x", "content": [], "stop_reason": "refusal" });

    let empty = anthropic_error(FakeReply::status(200, body)).await;
    let refusal = anthropic_error(FakeReply::status(200, refusal)).await;

    assert_eq!(
        empty,
        ProviderError::BadReply("the reply has no text (stop_reason max_tokens)".into())
    );
    assert_eq!(
        refusal,
        ProviderError::BadReply("the model refused to answer".into())
    );
}

// ---- Anthropic: errors ----

#[tokio::test]
async fn anthropic_401_and_403_are_unauthorized() {
    let bad_key = anthropic_error(FakeReply::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    ))
    .await;
    let forbidden = anthropic_error(FakeReply::error(
        403,
        "permission_error",
        "no access to this model",
    ))
    .await;

    assert_eq!(
        bad_key,
        ProviderError::Unauthorized("status 401 authentication_error: invalid x-api-key".into())
    );
    assert_eq!(
        forbidden,
        ProviderError::Unauthorized("status 403 permission_error: no access to this model".into())
    );
}

#[tokio::test]
async fn anthropic_429_waits_as_long_as_retry_after_says() {
    let reply = FakeReply::error(
        429,
        "rate_limit_error",
        "Number of request tokens has exceeded your rate limit",
    )
    .header("retry-after", "7");

    let error = anthropic_error(reply).await;

    assert_eq!(
        error,
        ProviderError::RateLimited {
            retry_after: Some(Duration::from_secs(7))
        }
    );
}

#[tokio::test]
async fn anthropic_credit_and_billing_errors_are_quota_exhausted() {
    let message = "Your credit balance is too low to access the Anthropic API. \
                   Please go to Plans & Billing to upgrade or purchase credits.";
    let credit = FakeReply::error(400, "invalid_request_error", message);
    let billing = FakeReply::error(400, "billing_error", "Billing issue");
    let payment = FakeReply::error(402, "billing_error", "Payment required");

    let credit = anthropic_error(credit).await;
    let billing = anthropic_error(billing).await;
    let payment = anthropic_error(payment).await;

    let cut = format!("status 400 invalid_request_error: {message}");
    assert_eq!(credit, ProviderError::QuotaExhausted(cut));
    assert_eq!(
        billing,
        ProviderError::QuotaExhausted("status 400 billing_error: Billing issue".into())
    );
    assert!(matches!(payment, ProviderError::QuotaExhausted(d) if d.starts_with("status 402")));
}

#[tokio::test]
async fn anthropic_529_and_500_are_unavailable() {
    let overloaded = anthropic_error(FakeReply::error(529, "overloaded_error", "Overloaded")).await;
    let internal =
        anthropic_error(FakeReply::error(500, "api_error", "Internal server error")).await;

    assert_eq!(
        overloaded,
        ProviderError::Unavailable("status 529 overloaded_error: Overloaded".into())
    );
    assert_eq!(
        internal,
        ProviderError::Unavailable("status 500 api_error: Internal server error".into())
    );
}

#[tokio::test]
async fn anthropic_other_4xx_are_rejected() {
    let invalid = FakeReply::error(400, "invalid_request_error", "max_tokens: Field required");
    let too_large = FakeReply::error(
        413,
        "request_too_large",
        "Request exceeds the maximum allowed number of bytes.",
    );

    let invalid = anthropic_error(invalid).await;
    let too_large = anthropic_error(too_large).await;

    let expected = "status 400 invalid_request_error: max_tokens: Field required";
    assert_eq!(invalid, ProviderError::Rejected(expected.into()));
    let ProviderError::Rejected(detail) = too_large else {
        panic!("{too_large:?}")
    };
    assert!(
        detail.starts_with("status 413 request_too_large"),
        "{detail}"
    );
}

#[tokio::test]
async fn anthropic_unreadable_2xx_bodies_are_bad_replies() {
    let garbage = anthropic_error(FakeReply::raw(200, "not json")).await;
    let wrong_shape = anthropic_error(FakeReply::status(200, json!({ "type": "message" }))).await;

    assert_eq!(
        garbage,
        ProviderError::BadReply("not a message: syntax error at '.' (line 1, column 2)".into())
    );
    assert!(matches!(wrong_shape, ProviderError::BadReply(d) if d.contains("data error")));
}

// ---- Privacy ----

#[tokio::test]
async fn error_strings_never_carry_the_key_or_the_prompt() {
    // A careless server that quotes everything it was sent back in its errors.
    let fake = FakeLlm::start(Arc::new(|sent: &Recorded| {
        let key = sent
            .header("x-api-key")
            .or(sent.header("authorization"))
            .unwrap_or("");
        let echo = format!(
            "bad: {} / {} / {key}",
            sent.system().unwrap_or_default(),
            sent.last_user_text().unwrap_or_default()
        );
        let status = [400, 401, 402, 403, 404, 429, 500, 529][(sent.index / 2) % 8];
        FakeReply::error(status, "invalid_request_error", &echo)
    }));
    let openai = openai(&fake);
    let anthropic = anthropic(&fake);

    let mut errors = Vec::new();
    for _ in 0..8 {
        errors.push(openai.chat(&request(None)).await.unwrap_err());
        errors.push(anthropic.chat(&request(None)).await.unwrap_err());
    }
    let garbage = replying(FakeReply::raw(200, PROMPT));
    errors.push(
        AnthropicProvider::new(&garbage.base_url_anthropic(), None)
            .unwrap()
            .chat(&request(None))
            .await
            .unwrap_err(),
    );

    assert_eq!(
        errors.iter().filter(|e| e.kind() == "rate_limited").count(),
        2
    );
    for error in &errors {
        let shown = format!("{error} {error:?}");
        for secret in [KEY, PROMPT, SYSTEM, "Jane Roe", "retail bank"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
    assert!(
        errors
            .iter()
            .any(|e| e.to_string().contains("message withheld"))
    );
}
