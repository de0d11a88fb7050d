//! The worker pipeline: enrich → score → route → compose → guard → act, one file per stage,
//! sequenced by `run`, driven off the queue by `worker`.

pub mod act;
pub mod compose;
pub mod enrich;
pub mod guard;
pub mod route;
pub mod run;
pub mod score;
pub mod worker;

pub use act::Outcome;
pub use compose::{Composer, Draft};
pub use guard::{Guard, Hit};
pub use route::{Channel, Route, Track};
pub use run::{Handled, Pipeline, StageError};
pub use worker::{Handler, run_workers};
