//! Squire's web demo (`squire serve`): an axum server and an embedded page
//! that shows every pipeline stage.
//!
//! Depends on `squire-engine`. Its contents arrive with the web-demo issue;
//! until then this crate exports nothing.
