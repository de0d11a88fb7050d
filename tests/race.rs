//! Two workers (two stores with their own connection pools, as two processes would have)
//! racing on the same lead: one lead, one message, one outbox file. Runs on SQLite, and on
//! PostgreSQL with NURTURE_TEST_BACKEND=production.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use nurture::channels::Outbox;
use nurture::config::Settings;
use nurture::lead::{Consent, Email, Lead, LeadEvent};
use nurture::pipeline::Pipeline;
use nurture::store::SqlStore;

async fn worker(settings: &Settings, data_dir: &Path) -> Pipeline {
    let store = SqlStore::connect(&settings.effective_database_url(), 8)
        .await
        .unwrap();
    let deliverer = Arc::new(Outbox::open(data_dir, &settings.compose.email_from).unwrap());
    Pipeline::new(settings, Arc::new(store), deliverer, None).unwrap()
}

fn event(event_id: &str) -> LeadEvent {
    LeadEvent {
        event_id: event_id.into(),
        received_at_ms: nurture::queue::embedded::now_ms(),
        lead: Lead {
            email: Email::parse("racer@example.com").unwrap(),
            first_name: Some("Race".into()),
            last_name: None,
            company: None,
            job_title: Some("Head of Sales".into()),
            phone_raw: None,
            phone: None,
            country: None,
            source: "referral".into(),
            consent: Consent {
                email_marketing: true,
                sms_marketing: false,
            },
            answers: BTreeMap::new(),
            behaviour: BTreeMap::new(),
            utm: BTreeMap::new(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_racing_on_one_lead_create_one_lead_and_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = common::test_settings(dir.path());
    let backends = common::test_backends();
    if let Some(b) = &backends {
        b.apply(&mut settings);
    }
    let (a, b) = (
        worker(&settings, dir.path()).await,
        worker(&settings, dir.path()).await,
    );

    // The same delivery handed to both (a redelivery racing the first attempt).
    let same = event("race-1");
    let (first, second) = tokio::join!(a.handle_event(&same, false), b.handle_event(&same, false));
    // Two deliveries of the same person at once: serialised by the per-lead lock.
    let (two, three) = (event("race-2"), event("race-3"));
    let (third, fourth) = tokio::join!(a.handle_event(&two, false), b.handle_event(&three, false));

    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.lead_id, second.lead_id);
    assert_eq!(third.unwrap().lead_id, first.lead_id);
    assert_eq!(fourth.unwrap().lead_id, first.lead_id);
    let view = a.store.lead_view(first.lead_id).await.unwrap().unwrap();
    let keys: Vec<&str> = view
        .messages
        .iter()
        .map(|m| m.idempotency_key.as_str())
        .collect();
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("race-1-")).count(),
        1,
        "{keys:?}"
    );
    assert_eq!(view.interactions.len(), 3);
    assert_eq!(common::outbox_files(dir.path(), "email").len(), 3);
    let returning = view
        .events
        .iter()
        .filter(|e| e["stage"] == "enrich" && e["detail"]["is_returning"] == true)
        .count();
    assert_eq!(
        returning, 2,
        "exactly the two later deliveries see a returning lead"
    );
    assert_eq!(a.store.stats().await.unwrap().processed, 3);
    if let Some(b) = &backends {
        b.remove(&settings).await;
    }
}
