//! Access policies: a pure model (no I/O, no async, no HTTP types), so every
//! rule can be tested from a table.
//!
//! Semantics follow Cloudflare Access:
//! - a policy has one action (Allow, Block, Bypass, Service Auth) and rules:
//!   `include` (any must match, at least one rule), `require` (all must
//!   match), `exclude` (none may match);
//! - Bypass and Service Auth policies are tried first, top to bottom; then
//!   Allow and Block, top to bottom; the first match decides; no match denies;
//! - Bypass may only use non-identity selectors (everyone, IP ranges,
//!   countries): it lets requests through without authentication;
//! - a service token is authorized only by Service Auth policies; Allow and
//!   Block speak about signed-in users.
//!
//! # Layout
//! - this module: the model ([`Policy`], [`Selector`], [`Action`]) and its
//!   validation;
//! - [`eval`]: what a request carries ([`eval::Request`]) and the evaluation
//!   ([`eval::evaluate`] → [`eval::Decision`]).

pub mod eval;

use std::collections::BTreeSet;

use analytics::Label;
use ipnet::IpNet;

/// What a matching policy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Let a signed-in user through.
    Allow,
    /// Refuse a signed-in user (an exception carved out of Allow policies).
    Block,
    /// Let anyone matching through without authentication.
    Bypass,
    /// Let a service token (or other non-user credential) through.
    ServiceAuth,
}

impl Action {
    /// Bypass and Service Auth are evaluated before Allow and Block.
    fn first_pass(self) -> bool {
        matches!(self, Action::Bypass | Action::ServiceAuth)
    }
}

/// One condition on a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Every request.
    Everyone,
    /// A user whose email is exactly this (case-insensitive).
    Email(String),
    /// A user whose email's domain is exactly this domain (no subdomains).
    EmailDomain(String),
    /// A user whose email is one of these (lowercased).
    EmailList(BTreeSet<String>),
    /// A user in this group (the `groups` claim).
    Group(String),
    /// A user whose claim `name` equals `value` (or, for an array claim,
    /// contains it).
    Claim {
        /// Claim name.
        name: String,
        /// Expected value.
        value: String,
    },
    /// A client address inside one of these ranges.
    IpRange(Vec<IpNet>),
    /// A client in one of these countries (ISO 3166 alpha-2, uppercase).
    Country(BTreeSet<String>),
    /// This service token (its client id).
    ServiceToken(String),
    /// Any valid service token.
    AnyServiceToken,
    /// A user who signed in with this method (an `amr` value, e.g. `mfa`).
    AuthMethod(String),
}

impl Selector {
    /// Whether the selector speaks about a signed-in user's identity.
    pub fn is_identity(&self) -> bool {
        !matches!(
            self,
            Selector::Everyone | Selector::IpRange(_) | Selector::Country(_)
        )
    }
}

/// A named policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Name, reported in decisions and audit records.
    pub name: Label,
    /// What a match does.
    pub action: Action,
    /// Any of these must match (at least one rule).
    pub include: Vec<Selector>,
    /// All of these must match.
    pub require: Vec<Selector>,
    /// None of these may match.
    pub exclude: Vec<Selector>,
}

/// Why a policy list was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A policy without include rules could never match.
    #[error("policy `{policy}` has no include rule")]
    NoInclude {
        /// The policy.
        policy: String,
    },
    /// Bypass lets requests through unauthenticated, so it cannot test who
    /// the user is.
    #[error(
        "bypass policy `{policy}` uses an identity selector; bypass allows only everyone, IP ranges and countries"
    )]
    IdentityInBypass {
        /// The policy.
        policy: String,
    },
    /// Two policies with one name would make decisions ambiguous.
    #[error("policy name `{policy}` is used twice")]
    DuplicateName {
        /// The name.
        policy: String,
    },
    /// An email-domain selector that is not a bare domain.
    #[error("policy `{policy}`: `{domain}` is not a domain (write `example.com`)")]
    BadDomain {
        /// The policy.
        policy: String,
        /// The value.
        domain: String,
    },
}

/// An application's ordered, validated policies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

impl PolicySet {
    /// Validates `policies` (kept in the order given).
    pub fn new(policies: Vec<Policy>) -> Result<Self, PolicyError> {
        let mut names = BTreeSet::new();
        for policy in &policies {
            if !names.insert(&*policy.name) {
                return Err(PolicyError::DuplicateName {
                    policy: policy.name.to_string(),
                });
            }
            if policy.include.is_empty() {
                return Err(PolicyError::NoInclude {
                    policy: policy.name.to_string(),
                });
            }
            let selectors = || {
                policy
                    .include
                    .iter()
                    .chain(&policy.require)
                    .chain(&policy.exclude)
            };
            if policy.action == Action::Bypass && selectors().any(Selector::is_identity) {
                return Err(PolicyError::IdentityInBypass {
                    policy: policy.name.to_string(),
                });
            }
            for selector in selectors() {
                if let Selector::EmailDomain(domain) = selector
                    && (domain.is_empty() || domain.contains('@') || domain.starts_with('.'))
                {
                    return Err(PolicyError::BadDomain {
                        policy: policy.name.to_string(),
                        domain: domain.clone(),
                    });
                }
            }
        }
        Ok(Self { policies })
    }

    /// The policies, in configured order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }
}
