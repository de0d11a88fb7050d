//! The main job end to end on the embedded default: real rows over HTTP, through every
//! stage, into the outbox or the review queue.

mod common;

use std::path::Path;

use common::{TestApp, flat_lead, shared_data};
use nurture::replay::{ReplayOptions, load_bodies, replay};
use serde_json::{Value, json};

fn row(bodies: &[Vec<u8>], index: usize) -> Value {
    serde_json::from_slice(&bodies[index]).unwrap()
}

fn channels(lead: &Value) -> Vec<(String, String)> {
    lead["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["channel"].as_str().unwrap().to_owned(),
                m["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn post_and_read(app: &TestApp, body: &Value) -> (Value, Value) {
    let (status, answer) = app.post(body).await;
    assert_eq!(status, 202, "{answer}");
    let event_id = answer["event_id"].as_str().unwrap().to_owned();
    let event = app.processed_event(&event_id).await;
    (event, app.lead_of(&event_id).await)
}

#[tokio::test]
async fn bank_marketing_rows_get_the_scores_worked_out_by_hand() {
    let app = TestApp::start(|_| {}).await;
    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/bank-marketing/bank-additional.csv");
    let bodies = load_bodies(&file, None, Some(300)).unwrap();

    // Row 1: blue-collar, cellular, 2 calls, never contacted before:
    // base 10 + reachable on mobile 5 = 15 → drip.
    let (event, lead) = post_and_read(&app, &row(&bodies, 0)).await;
    assert_eq!(
        (event["track"].as_str(), event["outcome"].as_str()),
        (Some("drip"), Some("sent"))
    );
    assert_eq!(lead["scores"][0]["score"], 15);
    assert_eq!(channels(&lead), vec![("email".into(), "sent".into())]);

    // Row 56: entrepreneur on a landline: base 10 + senior decision maker 30 = 40 → active.
    let (event, lead) = post_and_read(&app, &row(&bodies, 55)).await;
    assert_eq!(event["track"], "active");
    assert_eq!(lead["scores"][0]["score"], 40);

    // Row 84: retired, cellular, converted in the previous campaign after one contact:
    // 10 + 45 + 15 (retired) + 10 (contacted before) + 5 (mobile) = 85 → hot. No phone
    // number in the data, so the hot track sends email and alerts sales, but no SMS.
    let (event, lead) = post_and_read(&app, &row(&bodies, 83)).await;
    assert_eq!(
        (event["track"].as_str(), event["outcome"].as_str()),
        (Some("hot"), Some("sent"))
    );
    assert_eq!(lead["scores"][0]["score"], 85);
    assert_eq!(
        channels(&lead),
        vec![
            ("email".into(), "sent".into()),
            ("slack".into(), "sent".into())
        ]
    );
    assert!(
        lead["scores"][0]["reasoning"][0]
            .as_str()
            .unwrap()
            .contains("converted in a previous campaign")
    );

    let options = ReplayOptions {
        url: app.base.clone(),
        concurrency: 8,
        progress: false,
    };
    let summary = replay(bodies, &options).await.unwrap();
    assert_eq!(
        (
            summary.accepted,
            summary.duplicate,
            summary.rejected,
            summary.failed
        ),
        (297, 3, 0, 0)
    );
    let stats = app.wait_processed(300).await;
    assert_eq!(stats["processed"], 300);
    assert_eq!(stats["dead_lettered"], 0);
    let tracks = &stats["by_track"];
    let total: u64 = ["drip", "active", "hot"]
        .iter()
        .map(|t| tracks[t].as_u64().unwrap())
        .sum();
    assert_eq!(total, 300);
    assert_eq!(app.outbox_files("email").len(), 300);
    app.stop().await;
}

#[tokio::test]
async fn x_education_rows_are_scored_and_opt_outs_suppressed() {
    let Some(file) = shared_data("leads/Leads.csv") else {
        return;
    };
    let app = TestApp::start(|_| {}).await;
    let bodies = load_bodies(&file, None, Some(200)).unwrap();

    // Lead 660737: unemployed, Olark Chat, no visits: 10 - 10 = 0, clamped to 1 → drip.
    let (event, lead) = post_and_read(&app, &row(&bodies, 0)).await;
    assert_eq!(event["track"], "drip");
    assert_eq!(lead["scores"][0]["score"], 1);
    assert_eq!(lead["email"], "lead-660737@example.com");

    // Lead 660728: unemployed -10, organic search +5, 5 visits +10, 674 s on site +15 +5:
    // 10 - 10 + 5 + 10 + 15 + 5 = 35 → active.
    let (event, lead) = post_and_read(&app, &row(&bodies, 1)).await;
    assert_eq!(
        (event["track"].as_str(), event["outcome"].as_str()),
        (Some("active"), Some("sent"))
    );
    assert_eq!(lead["scores"][0]["score"], 35);

    // Lead 660553 ticked "Do Not Email": stored and scored, nothing written to it.
    let (event, lead) = post_and_read(&app, &row(&bodies, 14)).await;
    assert_eq!(lead["email"], "lead-660553@example.com");
    assert_eq!(event["outcome"], "suppressed");
    assert_eq!(lead["scores"].as_array().unwrap().len(), 1);
    assert!(lead["messages"].as_array().unwrap().is_empty());

    let options = ReplayOptions {
        url: app.base.clone(),
        concurrency: 8,
        progress: false,
    };
    let summary = replay(bodies, &options).await.unwrap();
    assert_eq!(
        (summary.accepted, summary.duplicate, summary.rejected),
        (197, 3, 0)
    );
    let stats = app.wait_processed(200).await;
    assert_eq!(stats["dead_lettered"], 0);
    let outcomes = &stats["by_outcome"];
    let sent = outcomes["sent"].as_u64().unwrap();
    let suppressed = outcomes["suppressed"].as_u64().unwrap();
    assert_eq!(
        sent + suppressed + outcomes["review"].as_u64().unwrap(),
        200
    );
    assert_eq!(app.outbox_files("email").len() as u64, sent);
    app.stop().await;
}

#[tokio::test]
async fn the_same_delivery_three_times_is_one_lead_and_one_message() {
    let app = TestApp::start(|_| {}).await;
    let body = std::fs::read("tests/fixtures/landing-lead.json").unwrap();

    let first = app.post_raw(body.clone(), "application/json").await;
    let second = app.post_raw(body.clone(), "application/json").await;
    // Same idempotency key, different bytes: still the same delivery.
    let mut changed: Value = serde_json::from_slice(&body).unwrap();
    changed["answers"]["message"] = json!("resent");
    let third = app.post(&changed).await;

    assert_eq!(first.0, 202);
    assert_eq!((second.0, &second.1["status"]), (200, &json!("duplicate")));
    assert_eq!((third.0, &third.1["event_id"]), (200, &first.1["event_id"]));
    let stats = app.wait_processed(1).await;
    assert_eq!(
        (stats["received"].as_u64(), stats["duplicates"].as_u64()),
        (Some(1), Some(2))
    );
    let lead = app.lead_of(first.1["event_id"].as_str().unwrap()).await;
    assert_eq!(lead["interactions"].as_array().unwrap().len(), 1);
    assert_eq!(app.outbox_files("email").len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn a_body_without_key_is_deduplicated_by_its_hash() {
    let app = TestApp::start(|_| {}).await;
    let body = flat_lead("hash@example.com");

    let first = app.post(&body).await;
    let second = app.post(&body).await;

    assert_eq!((first.0, second.0), (202, 200));
    assert_eq!(second.1["event_id"], first.1["event_id"]);
    app.stop().await;
}

#[tokio::test]
async fn a_returning_lead_is_welcomed_back() {
    let app = TestApp::start(|_| {}).await;
    let mut body = flat_lead("Returning.Person@Example.com");

    let (_, first) = post_and_read(&app, &body).await;
    body["email"] = json!("returning.person@example.COM");
    body["answers"] = json!({ "message": "back again" });
    let (_, second) = post_and_read(&app, &body).await;

    assert_eq!(first["id"], second["id"]);
    let emails: Vec<&Value> = second["messages"].as_array().unwrap().iter().collect();
    assert_eq!(emails.len(), 2);
    assert!(!emails[0]["body"].as_str().unwrap().contains("Welcome back"));
    assert!(
        emails[1]["body"]
            .as_str()
            .unwrap()
            .starts_with("Welcome back Test,"),
        "{}",
        emails[1]["body"]
    );
    assert!(
        emails[1]["subject"]
            .as_str()
            .unwrap()
            .starts_with("Welcome back")
    );
    app.stop().await;
}

#[tokio::test]
async fn an_idn_address_is_stored_as_typed_and_mailed_in_punycode() {
    let app = TestApp::start(|_| {}).await;
    let body = json!({ "email": "zoe@münchen.example", "first_name": "Zoë", "last_name": "Ünal", "consent": true, "job_title": "CTO" });

    let (event, lead) = post_and_read(&app, &body).await;

    assert_eq!(event["outcome"], "sent");
    assert_eq!(lead["email"], "zoe@münchen.example");
    let eml = std::fs::read_to_string(&app.outbox_files("email")[0]).unwrap();
    assert!(eml.contains("zoe@xn--mnchen-3ya.example"), "{eml}");
    assert!(
        eml.contains("To: =?utf-8?"),
        "display name is RFC 2047 encoded: {eml}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_lead_without_consent_is_scored_but_gets_nothing() {
    let app = TestApp::start(|_| {}).await;
    let body = json!({ "email": "max@example.com", "name": "Max Example", "job_title": "CEO",
                       "consent": { "email_marketing": false, "sms_marketing": false } });

    let (event, lead) = post_and_read(&app, &body).await;

    assert_eq!(event["outcome"], "suppressed");
    assert_eq!(lead["scores"][0]["score"], 40);
    assert!(lead["messages"].as_array().unwrap().is_empty());
    assert!(app.outbox_files("email").is_empty() && app.outbox_files("slack").is_empty());
    app.stop().await;
}

#[tokio::test]
async fn a_hot_lead_with_sms_consent_gets_email_sms_and_a_slack_alert() {
    let app = TestApp::start(|_| {}).await;
    let body = json!({ "email": "noah@example.net", "name": "Noah Example", "job_title": "Founder",
                       "phone": "07700 900123", "country": "GB", "source": "referral",
                       "answers": { "company_size": "1000+" }, "consent": true });

    let (event, lead) = post_and_read(&app, &body).await;

    // 10 + founder 30 + referral 15 + large company 20 = 75 → hot.
    assert_eq!(
        (event["track"].as_str(), event["outcome"].as_str()),
        (Some("hot"), Some("sent"))
    );
    let sms: Value =
        serde_json::from_slice(&std::fs::read(&app.outbox_files("sms")[0]).unwrap()).unwrap();
    assert_eq!(sms["To"], "+447700900123");
    assert!(sms["Body"].as_str().unwrap().contains("STOP"));
    let slack: Value =
        serde_json::from_slice(&std::fs::read(&app.outbox_files("slack")[0]).unwrap()).unwrap();
    assert_eq!(slack["channel"], "#sales-hot-leads");
    assert!(slack["text"].as_str().unwrap().contains("score 75"));
    assert_eq!(channels(&lead).len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn a_draft_promising_guaranteed_returns_is_held_for_review_not_sent() {
    let templates = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(templates.path().join("drip")).unwrap();
    std::fs::write(
        templates.path().join("drip/email.txt"),
        "Subject: Grow your savings\n\nHello {{ greeting_name }}, our fund offers guaranteed returns of 9% a year.\nUnsubscribe: {{ unsubscribe_url }}\n",
    )
    .unwrap();
    let dir = templates.path().to_path_buf();
    let app = TestApp::start(move |s| s.compose.templates_dir = Some(dir)).await;

    let (event, lead) = post_and_read(&app, &flat_lead("saver@example.com")).await;

    assert_eq!(event["outcome"], "review");
    assert_eq!(channels(&lead), vec![("email".into(), "review".into())]);
    let task = &lead["review_tasks"][0];
    assert_eq!(task["title"], "AI draft to review");
    assert!(
        task["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("forbidden_promise: 'guaranteed returns'"),
        "{task}"
    );
    assert!(app.outbox_files("email").is_empty());
    let stats = app.wait_processed(1).await;
    assert_eq!(stats["review_reasons"]["forbidden_promise"], 1);
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("nurture_guard_blocks_total{rule=\"forbidden_promise\"}"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_lead_with_too_little_data_waits_for_a_human() {
    let app = TestApp::start(|_| {}).await;
    let body = json!({ "email": "thin@example.com", "consent": true });

    let (event, lead) = post_and_read(&app, &body).await;

    assert_eq!(event["outcome"], "review");
    let reason = lead["review_tasks"][0]["reasons"][0].as_str().unwrap();
    assert!(reason.starts_with("low_confidence"), "{reason}");
    app.stop().await;
}

#[tokio::test]
async fn stats_and_metrics_report_what_happened() {
    let app = TestApp::start(|_| {}).await;
    app.post(&flat_lead("m1@example.com")).await;
    app.post(&flat_lead("m1@example.com")).await;
    app.post_raw("{", "application/json").await;

    let stats = app.wait_processed(1).await;
    let metrics = app.get_text("/metrics").await;

    assert_eq!(stats["received"], 1);
    assert_eq!(stats["duplicates"], 1);
    assert_eq!(stats["by_outcome"]["sent"], 1);
    assert!(
        stats["e2e_latency_ms"]["p99"].as_f64().unwrap()
            >= stats["e2e_latency_ms"]["p50"].as_f64().unwrap()
    );
    for name in [
        "nurture_leads_received_total",
        "nurture_leads_duplicate_total",
        "nurture_leads_rejected_total{code=\"malformed_json\"}",
        "nurture_leads_processed_total{",
        "nurture_e2e_latency_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    let (health, body) = app.get("/healthz").await;
    assert_eq!((health, body), (200, json!({ "status": "ok" })));
    app.stop().await;
}
