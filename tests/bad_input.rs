//! Bad input gets a clear error naming the field, and no input makes the server panic.

mod common;

use common::TestApp;
use nurture::ingest::parse_body;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

async fn refused(
    app: &TestApp,
    body: impl Into<Vec<u8>>,
    content_type: &str,
) -> (u16, String, Value) {
    let (status, answer) = app.post_raw(body, content_type).await;
    let error = &answer["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
    (
        status,
        error["code"].as_str().unwrap_or_default().to_owned(),
        error["field"].clone(),
    )
}

#[tokio::test]
async fn each_bad_input_gets_its_status_code_and_names_the_field() {
    let app = TestApp::start(|_| {}).await;
    let json = "application/json";

    assert_eq!(
        refused(&app, "{\"email\":", json).await,
        (400, "malformed_json".into(), Value::Null)
    );
    assert_eq!(
        refused(
            &app,
            "email=a@example.com",
            "application/x-www-form-urlencoded"
        )
        .await
        .0,
        415
    );
    assert_eq!(
        refused(&app, "{}", "text/plain").await.1,
        "unsupported_media_type"
    );
    let big = format!(
        "{{\"email\":\"a@example.com\",\"answers\":{{\"m\":\"{}\"}}}}",
        "A".repeat(300 * 1024)
    );
    assert_eq!(
        refused(&app, big, json).await,
        (413, "payload_too_large".into(), Value::Null)
    );
    assert_eq!(
        refused(&app, r#"{"name":"No Email"}"#, json).await,
        (422, "missing_field".into(), json!("email"))
    );
    assert_eq!(
        refused(
            &app,
            r#"{"schema":"lead.v1","contact":{"first_name":"x"}}"#,
            json
        )
        .await,
        (422, "missing_field".into(), json!("contact.email"))
    );
    assert_eq!(
        refused(&app, r#"{"email":"not-an-address"}"#, json).await,
        (422, "invalid_field".into(), json!("email"))
    );
    assert_eq!(
        refused(&app, r#"{"email":"a@example.com","answers":[1]}"#, json)
            .await
            .2,
        json!("answers")
    );
    assert_eq!(
        refused(&app, r#"{"email":"a@example.com","country":"Italy"}"#, json)
            .await
            .2,
        json!("country")
    );
    let oversized_answer =
        json!({ "email": "long@example.com", "answers": { "message": "A".repeat(5000) } });
    assert_eq!(
        refused(&app, oversized_answer.to_string(), json).await.2,
        json!("answers.message")
    );
    let stats = app.get("/api/stats").await.1;
    assert_eq!(stats["received"], 0);
    app.stop().await;
}

#[tokio::test]
async fn deep_nesting_is_refused_at_the_door_instead_of_dead_lettered_later() {
    let app = TestApp::start(|_| {}).await;
    let deep = format!("{}{}", "[".repeat(125), "]".repeat(125));
    let body = format!(r#"{{"email":"deep@example.com","consent":true,"answers":{{"a":{deep}}}}}"#);

    let (status, code, field) = refused(&app, body, "application/json").await;

    assert_eq!((status, code.as_str()), (422, "invalid_field"));
    assert!(field.as_str().unwrap().starts_with("answers.a"), "{field}");
    assert_eq!(app.get("/api/stats").await.1["received"], 0);
    app.stop().await;
}

#[tokio::test]
async fn error_messages_speak_json_not_rust_type_names() {
    let app = TestApp::start(|_| {}).await;

    let (_, consent) = app
        .post(&json!({ "email": "c@example.com", "consent": "yes" }))
        .await;
    let (_, contact) = app.post(&json!({ "contact": "nope" })).await;
    let (_, country) = app
        .post(&json!({ "email": "c@example.com", "country": "UK" }))
        .await;

    let message = |v: &Value| v["error"]["message"].as_str().unwrap().to_owned();
    assert!(message(&consent).contains("true, false"), "{consent}");
    assert!(!message(&consent).contains("FlatConsent"));
    assert!(!message(&contact).contains("V1Contact"), "{contact}");
    assert_eq!(country["error"]["field"], "country");
    app.stop().await;
}

#[tokio::test]
async fn a_header_injection_name_is_refused_before_it_can_reach_an_email() {
    let app = TestApp::start(|_| {}).await;
    let cases: Value = serde_json::from_slice(
        &std::fs::read("tests/fixtures/landing-lead-edge-cases.json").unwrap(),
    )
    .unwrap();
    let crlf = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["case"] == "crlf-in-name")
        .unwrap();
    let body = json!({ "schema": "lead.v1", "contact": crlf["contact"], "consent": { "email_marketing": true } });

    let (status, code, field) = refused(&app, body.to_string(), "application/json").await;

    assert_eq!(
        (status, code.as_str(), field),
        (422, "invalid_field", json!("contact.first_name"))
    );
    assert!(app.outbox_files("email").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn every_edge_case_contact_gets_its_documented_answer() {
    let app = TestApp::start(|_| {}).await;
    let cases: Value = serde_json::from_slice(
        &std::fs::read("tests/fixtures/landing-lead-edge-cases.json").unwrap(),
    )
    .unwrap();

    let mut answers = Vec::new();
    for case in cases.as_array().unwrap() {
        let mut body = json!({ "schema": "lead.v1", "contact": case["contact"], "answers": case["answers"],
                               "consent": case.get("consent").cloned().unwrap_or(json!({ "email_marketing": true })) });
        body["contact"]["job_title"] = json!("Head of Growth");
        if case["case"] == "oversized-field" {
            body["answers"] = json!({ "message": "A".repeat(1024 * 1024) });
        }
        let (status, answer) = app.post(&body).await;
        answers.push((
            case["case"].as_str().unwrap().to_owned(),
            status,
            answer["error"]["field"].clone(),
        ));
    }

    let expected = [
        ("idn-domain-and-unicode-name", 202, Value::Null),
        ("utf8-local-part", 422, json!("contact.email")),
        ("uppercase-and-plus-duplicate", 202, Value::Null),
        ("crlf-in-name", 422, json!("contact.first_name")),
        ("rtl-and-emoji-name", 202, Value::Null),
        ("national-format-phone-with-trunk-zero", 202, Value::Null),
        ("digits-only-phone", 202, Value::Null),
        ("no-consent", 202, Value::Null),
        ("prompt-injection-in-message", 202, Value::Null),
        ("oversized-field", 413, Value::Null),
    ];
    let expected: Vec<(String, u16, Value)> = expected
        .into_iter()
        .map(|(c, s, f)| (c.to_owned(), s, f))
        .collect();
    assert_eq!(answers, expected);
    app.wait_processed(7).await;
    let bidi = common::outbox_files(app.dir.path(), "email")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .find(|eml| eml.contains("rocket.example@example.com"))
        .unwrap();
    assert!(
        !bidi.contains('\u{202E}'),
        "bidi override leaked into a header"
    );
    app.stop().await;
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        Just(Value::from("a@example.com")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        let keys = prop_oneof![
            Just("email".to_owned()),
            Just("contact".to_owned()),
            Just("answers".to_owned()),
            Just("name".to_owned()),
            Just("schema".to_owned()),
            Just("consent".to_owned()),
            Just("phone".to_owned()),
            Just("country".to_owned()),
            "[a-z_]{1,8}",
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(keys, inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_body(&bytes, 4000);
    }

    #[test]
    fn parsing_arbitrary_json_never_panics_and_errors_name_a_field(value in arbitrary_json()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        if let Err(e) = parse_body(&bytes, 4000) {
            prop_assert!(e.field().is_some(), "valid JSON refused without a field: {e}");
        }
    }
}

#[tokio::test]
async fn the_server_answers_arbitrary_bodies_with_2xx_or_4xx_and_stays_up() {
    let app = TestApp::start(|_| {}).await;
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(150));
    let bodies = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        arbitrary_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
    ];

    for _ in 0..150 {
        let body = bodies.new_tree(&mut runner).unwrap().current();
        let (status, answer) = app.post_raw(body, "application/json").await;
        assert!(
            matches!(status, 200 | 202 | 400 | 422),
            "status {status}: {answer}"
        );
    }
    let (health, _) = app.get("/healthz").await;
    assert_eq!(health, 200);
    app.stop().await;
}
