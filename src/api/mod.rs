//! The read side: health, stats, a lead's record, a delivery's status, Prometheus metrics.

pub mod error;
pub mod routes;

pub use error::ApiError;
pub use routes::{Stats, collect_stats};
