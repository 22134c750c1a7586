//! Audit events of the origin gateway.
//!
//! Every access decision, from the XDP layer (drop records) and from the
//! HTTP layer (one per request), is one [`Event`]. The gateway hands events
//! to an [`AuditSender`], which never blocks the request path: when its
//! bounded channel is full it applies the configured [`Overflow`] policy.
//! The receiving side ([`AuditReceiver`]) belongs to whatever keeps the
//! events.
//!
//! # Layout
//! - [`event`]: the record, defined once.
//! - [`channel`]: the bounded, non-blocking hand-off and its overflow policy.
//! - [`jsonl`]: a JSON-lines file of events.

pub mod channel;
pub mod event;
pub mod jsonl;

pub use channel::{AuditReceiver, AuditSender, Overflow, Refused, Slot, channel};
pub use event::{Decision, Event, Layer};
