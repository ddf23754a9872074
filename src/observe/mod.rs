//! What the gateway tells its operators: the access line per request and
//! the metrics the admin listener serves.

pub mod accesslog;
pub mod metrics;
