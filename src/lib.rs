//! nurture: AI-assisted lead nurturing. A lead arrives by webhook (`ingest`), waits durably
//! in a `queue`, and a worker runs the `pipeline` (enrich → score → route → compose → guard
//! → act) against the CRM `store`, delivering through `channels` or holding drafts for review.
//!
//! - `lead`: domain types valid by construction (Email, Phone, Score, Lead)
//! - `config`: the typed settings tree
//! - `ingest`: webhook routes and body parsing
//! - `queue`: the Queue trait and the embedded SQLite queue
//! - `store`: the Store trait and the SQLite CRM
//! - `pipeline`: one module per stage, plus the worker loop
//! - `ai`: scorers (the built-in points model)
//! - `channels`: delivery (the file outbox)
//! - `api`: read side (stats, leads, metrics)
//! - `server`: assembles it all in one process
//! - `replay`: posts JSONL or mapped CSV rows to a running server
//! - `demo`: the main job on the shipped bank-marketing data

pub mod ai;
pub mod api;
pub mod channels;
pub mod config;
pub mod demo;
pub mod ingest;
pub mod lead;
pub mod pipeline;
pub mod queue;
pub mod replay;
pub mod server;
pub mod store;
pub mod telemetry;
