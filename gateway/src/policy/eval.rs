//! Evaluation of a [`PolicySet`] against what a request carries.

use std::{collections::BTreeMap, net::IpAddr};

use analytics::Label;

use super::{Action, Policy, PolicySet, Selector};

/// A claim value as policies see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimValue {
    /// A string claim.
    Text(String),
    /// An array-of-strings claim (e.g. `groups`).
    List(Vec<String>),
}

/// A signed-in user, from a verified token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct User {
    /// The `email` claim, as the identity provider verified it.
    pub email: Option<String>,
    /// The `sub` claim.
    pub subject: String,
    /// Group names (the `groups` claim).
    pub groups: Vec<String>,
    /// Every other claim policies may test.
    pub claims: BTreeMap<String, ClaimValue>,
    /// Authentication methods (`amr`).
    pub auth_methods: Vec<String>,
}

/// A verified service token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceToken {
    /// Its client id.
    pub client_id: Label,
    /// Its name.
    pub name: Label,
}

/// What the proxy knows about a request once credentials are verified.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The signed-in user, if a user token was verified.
    pub user: Option<&'a User>,
    /// The service token, if one was verified.
    pub service_token: Option<&'a ServiceToken>,
    /// The client address (the relay's header only from a trusted relay peer).
    pub client_ip: IpAddr,
    /// The client's country (token claim or trusted relay header), if known.
    pub country: Option<&'a str>,
}

/// What the policies decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// An Allow policy matched a signed-in user.
    Allow,
    /// A Bypass policy matched: let through without authentication.
    Bypass,
    /// A Service Auth policy matched a service token.
    ServiceAuth,
    /// A Block policy matched.
    Block,
    /// Nothing matched: deny by default.
    NoMatch,
}

impl Effect {
    /// Whether the request goes through.
    pub fn allows(self) -> bool {
        matches!(self, Effect::Allow | Effect::Bypass | Effect::ServiceAuth)
    }
}

/// The outcome and what produced it, for the response and the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision<'p> {
    /// The effect.
    pub effect: Effect,
    /// The deciding policy's name.
    pub policy: Option<&'p Label>,
    /// Index of the include rule that matched in that policy.
    pub include: Option<usize>,
}

/// Evaluates `set` for `request`, in Cloudflare Access order: Bypass and
/// Service Auth policies first, then Allow and Block; first match wins.
pub fn evaluate<'p>(set: &'p PolicySet, request: &Request<'_>) -> Decision<'p> {
    let first = set.policies().iter().filter(|p| p.action.first_pass());
    let second = set.policies().iter().filter(|p| !p.action.first_pass());
    for policy in first.chain(second) {
        let applies = match policy.action {
            Action::Bypass => true,
            Action::ServiceAuth => request.service_token.is_some(),
            Action::Allow | Action::Block => request.user.is_some(),
        };
        if !applies {
            continue;
        }
        if let Some(include) = matches(policy, request) {
            let effect = match policy.action {
                Action::Allow => Effect::Allow,
                Action::Block => Effect::Block,
                Action::Bypass => Effect::Bypass,
                Action::ServiceAuth => Effect::ServiceAuth,
            };
            return Decision {
                effect,
                policy: Some(&policy.name),
                include: Some(include),
            };
        }
    }
    Decision {
        effect: Effect::NoMatch,
        policy: None,
        include: None,
    }
}

/// The index of the first include rule that matched, when the policy
/// matches as a whole.
fn matches(policy: &Policy, request: &Request<'_>) -> Option<usize> {
    let include = policy.include.iter().position(|s| selects(s, request))?;
    let required = policy.require.iter().all(|s| selects(s, request));
    let excluded = policy.exclude.iter().any(|s| selects(s, request));
    (required && !excluded).then_some(include)
}

fn selects(selector: &Selector, request: &Request<'_>) -> bool {
    let user = request.user;
    match selector {
        Selector::Everyone => true,
        Selector::Email(expected) => {
            email(user).is_some_and(|(full, _)| full.eq_ignore_ascii_case(expected))
        }
        Selector::EmailDomain(domain) => {
            email(user).is_some_and(|(_, host)| host.eq_ignore_ascii_case(domain))
        }
        Selector::EmailList(list) => {
            email(user).is_some_and(|(full, _)| list.contains(&full.to_ascii_lowercase()))
        }
        Selector::Group(group) => user.is_some_and(|u| u.groups.iter().any(|g| g == group)),
        Selector::Claim { name, value } => user.is_some_and(|u| match u.claims.get(name) {
            Some(ClaimValue::Text(text)) => text == value,
            Some(ClaimValue::List(items)) => items.iter().any(|item| item == value),
            None => false,
        }),
        Selector::IpRange(nets) => {
            let ip = request.client_ip.to_canonical();
            nets.iter().any(|net| net.contains(&ip))
        }
        Selector::Country(countries) => request
            .country
            .is_some_and(|c| countries.contains(&c.to_ascii_uppercase())),
        Selector::ServiceToken(id) => request.service_token.is_some_and(|t| t.client_id == *id),
        Selector::AnyServiceToken => request.service_token.is_some(),
        Selector::AuthMethod(method) => {
            user.is_some_and(|u| u.auth_methods.iter().any(|m| m == method))
        }
    }
}

/// The user's email and its domain, only when the email is well formed:
/// exactly one `@`, something on each side, no whitespace. A value like
/// `a@evil.com@corp.com` has no domain at all, rather than `corp.com`.
fn email(user: Option<&User>) -> Option<(&str, &str)> {
    let full = user?.email.as_deref()?;
    let (local, host) = full.split_once('@')?;
    if local.is_empty()
        || host.is_empty()
        || host.contains('@')
        || full.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return None;
    }
    Some((full, host))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::policy::PolicyError;

    fn policy(name: &str, action: Action, include: Vec<Selector>) -> Policy {
        Policy {
            name: name.to_owned().into(),
            action,
            include,
            require: vec![],
            exclude: vec![],
        }
    }

    fn user(email: &str) -> User {
        User {
            email: Some(email.into()),
            subject: "sub-1".into(),
            groups: vec!["engineering".into()],
            claims: BTreeMap::from([
                ("department".into(), ClaimValue::Text("infra".into())),
                (
                    "roles".into(),
                    ClaimValue::List(vec!["admin".into(), "dev".into()]),
                ),
            ]),
            auth_methods: vec!["pwd".into(), "mfa".into()],
        }
    }

    fn request<'a>(user: Option<&'a User>, token: Option<&'a ServiceToken>) -> Request<'a> {
        Request {
            user,
            service_token: token,
            client_ip: "198.51.100.7".parse().unwrap(),
            country: Some("pt"),
        }
    }

    fn set(policies: Vec<Policy>) -> PolicySet {
        PolicySet::new(policies).unwrap()
    }

    #[test]
    fn selectors_match_what_they_say() {
        let alice = user("Alice@Corp.example");
        let token = ServiceToken {
            client_id: "id-1.access".into(),
            name: "ci".into(),
        };
        let cases: Vec<(Selector, Option<&User>, Option<&ServiceToken>, bool)> = vec![
            (Selector::Everyone, None, None, true),
            (
                Selector::Email("alice@corp.example".into()),
                Some(&alice),
                None,
                true,
            ),
            (
                Selector::Email("bob@corp.example".into()),
                Some(&alice),
                None,
                false,
            ),
            (
                Selector::EmailDomain("corp.example".into()),
                Some(&alice),
                None,
                true,
            ),
            (
                Selector::EmailDomain("example".into()),
                Some(&alice),
                None,
                false,
            ),
            (
                Selector::EmailDomain("orp.example".into()),
                Some(&alice),
                None,
                false,
            ),
            (
                Selector::EmailList(BTreeSet::from(["alice@corp.example".into()])),
                Some(&alice),
                None,
                true,
            ),
            (
                Selector::Group("engineering".into()),
                Some(&alice),
                None,
                true,
            ),
            (
                Selector::Group("Engineering".into()),
                Some(&alice),
                None,
                false,
            ),
            (
                Selector::Claim {
                    name: "department".into(),
                    value: "infra".into(),
                },
                Some(&alice),
                None,
                true,
            ),
            (
                Selector::Claim {
                    name: "roles".into(),
                    value: "dev".into(),
                },
                Some(&alice),
                None,
                true,
            ),
            (
                Selector::Claim {
                    name: "roles".into(),
                    value: "ops".into(),
                },
                Some(&alice),
                None,
                false,
            ),
            (
                Selector::IpRange(vec!["198.51.100.0/24".parse().unwrap()]),
                None,
                None,
                true,
            ),
            (
                Selector::IpRange(vec!["192.0.2.0/24".parse().unwrap()]),
                None,
                None,
                false,
            ),
            (
                Selector::Country(BTreeSet::from(["PT".into()])),
                None,
                None,
                true,
            ),
            (
                Selector::Country(BTreeSet::from(["US".into()])),
                None,
                None,
                false,
            ),
            (
                Selector::ServiceToken("id-1.access".into()),
                None,
                Some(&token),
                true,
            ),
            (
                Selector::ServiceToken("id-2.access".into()),
                None,
                Some(&token),
                false,
            ),
            (Selector::AnyServiceToken, None, Some(&token), true),
            (Selector::AnyServiceToken, Some(&alice), None, false),
            (Selector::AuthMethod("mfa".into()), Some(&alice), None, true),
            (
                Selector::AuthMethod("hwk".into()),
                Some(&alice),
                None,
                false,
            ),
            // Identity selectors never match without a user.
            (
                Selector::EmailDomain("corp.example".into()),
                None,
                Some(&token),
                false,
            ),
            (Selector::Group("engineering".into()), None, None, false),
        ];
        for (selector, user, token, expected) in cases {
            assert_eq!(
                selects(&selector, &request(user, token)),
                expected,
                "{selector:?} with user {user:?} and token {token:?}"
            );
        }
    }

    #[test]
    fn malformed_emails_have_no_domain() {
        let domain = Selector::EmailDomain("corp.example".into());
        for email in [
            "a@evil.example@corp.example",
            "@corp.example",
            "alice@",
            "alice",
            "alice @corp.example",
            "alice@corp.example\n",
            "alice@sub.corp.example",
        ] {
            let u = user(email);
            assert!(!selects(&domain, &request(Some(&u), None)), "{email:?}");
        }
    }

    #[test]
    fn v4_mapped_client_addresses_match_v4_ranges() {
        let mut r = request(None, None);
        r.client_ip = "::ffff:198.51.100.7".parse().unwrap();
        assert!(selects(
            &Selector::IpRange(vec!["198.51.100.0/24".parse().unwrap()]),
            &r
        ));
    }

    #[test]
    fn evaluation_order_follows_access() {
        let alice = user("alice@corp.example");
        let token = ServiceToken {
            client_id: "id-1.access".into(),
            name: "ci".into(),
        };
        // Cloudflare's example: Allow A, Block B, Service Auth C, Bypass D,
        // Allow E runs as C, D, A, B, E.
        let policies = set(vec![
            policy(
                "A",
                Action::Allow,
                vec![Selector::Email("alice@corp.example".into())],
            ),
            policy("B", Action::Block, vec![Selector::Everyone]),
            policy("C", Action::ServiceAuth, vec![Selector::AnyServiceToken]),
            policy(
                "D",
                Action::Bypass,
                vec![Selector::IpRange(vec!["192.0.2.0/24".parse().unwrap()])],
            ),
            policy("E", Action::Allow, vec![Selector::Everyone]),
        ]);
        let bob = user("bob@corp.example");
        let mut from_bypass_range = request(Some(&bob), None);
        from_bypass_range.client_ip = "192.0.2.9".parse().unwrap();
        let cases: Vec<(&str, Request<'_>, Effect, Option<&str>)> = vec![
            (
                "alice: A before B",
                request(Some(&alice), None),
                Effect::Allow,
                Some("A"),
            ),
            (
                "bob: B before E",
                request(Some(&bob), None),
                Effect::Block,
                Some("B"),
            ),
            (
                "token: C first",
                request(None, Some(&token)),
                Effect::ServiceAuth,
                Some("C"),
            ),
            (
                "bypass range: D before A/B",
                from_bypass_range,
                Effect::Bypass,
                Some("D"),
            ),
            (
                "nobody: nothing applies",
                request(None, None),
                Effect::NoMatch,
                None,
            ),
        ];
        for (name, req, effect, by) in cases {
            let decision = evaluate(&policies, &req);
            assert_eq!(
                (decision.effect, decision.policy.map(|p| &**p)),
                (effect, by),
                "{name}"
            );
            assert_eq!(
                decision.effect.allows(),
                matches!(effect, Effect::Allow | Effect::Bypass | Effect::ServiceAuth)
            );
        }
    }

    #[test]
    fn include_require_exclude() {
        let mut p = policy(
            "eng-mfa",
            Action::Allow,
            vec![
                Selector::Group("sales".into()),
                Selector::EmailDomain("corp.example".into()),
            ],
        );
        p.require = vec![
            Selector::AuthMethod("mfa".into()),
            Selector::Country(BTreeSet::from(["PT".into()])),
        ];
        p.exclude = vec![Selector::Email("mallory@corp.example".into())];
        let policies = set(vec![p]);
        let alice = user("alice@corp.example");
        let decision = evaluate(&policies, &request(Some(&alice), None));
        assert_eq!(
            (decision.effect, decision.include),
            (Effect::Allow, Some(1))
        );

        let mut no_mfa = user("alice@corp.example");
        no_mfa.auth_methods = vec!["pwd".into()];
        assert_eq!(
            evaluate(&policies, &request(Some(&no_mfa), None)).effect,
            Effect::NoMatch
        );

        let mut abroad = request(Some(&alice), None);
        abroad.country = Some("US");
        assert_eq!(evaluate(&policies, &abroad).effect, Effect::NoMatch);

        let mallory = user("mallory@corp.example");
        assert_eq!(
            evaluate(&policies, &request(Some(&mallory), None)).effect,
            Effect::NoMatch
        );
    }

    #[test]
    fn service_tokens_need_service_auth_and_users_need_allow() {
        let token = ServiceToken {
            client_id: "id-1.access".into(),
            name: "ci".into(),
        };
        let allow_everyone = set(vec![policy("all", Action::Allow, vec![Selector::Everyone])]);
        assert_eq!(
            evaluate(&allow_everyone, &request(None, Some(&token))).effect,
            Effect::NoMatch,
            "Allow never authorizes a service token"
        );
        let service = set(vec![policy(
            "svc",
            Action::ServiceAuth,
            vec![Selector::ServiceToken("id-1.access".into())],
        )]);
        let alice = user("alice@corp.example");
        assert_eq!(
            evaluate(&service, &request(Some(&alice), None)).effect,
            Effect::NoMatch,
            "Service Auth never authorizes a user without a token"
        );
        assert_eq!(
            evaluate(&service, &request(None, Some(&token))).effect,
            Effect::ServiceAuth
        );
    }

    #[test]
    fn invalid_policy_sets_are_refused() {
        let cases = [
            (
                vec![policy("empty", Action::Allow, vec![])],
                PolicyError::NoInclude {
                    policy: "empty".into(),
                },
            ),
            (
                vec![policy(
                    "bp",
                    Action::Bypass,
                    vec![Selector::Email("a@b.example".into())],
                )],
                PolicyError::IdentityInBypass {
                    policy: "bp".into(),
                },
            ),
            (
                vec![
                    policy("x", Action::Allow, vec![Selector::Everyone]),
                    policy("x", Action::Block, vec![Selector::Everyone]),
                ],
                PolicyError::DuplicateName { policy: "x".into() },
            ),
            (
                vec![policy(
                    "d",
                    Action::Allow,
                    vec![Selector::EmailDomain("@corp.example".into())],
                )],
                PolicyError::BadDomain {
                    policy: "d".into(),
                    domain: "@corp.example".into(),
                },
            ),
        ];
        for (policies, expected) in cases {
            assert_eq!(PolicySet::new(policies).unwrap_err(), expected);
        }
    }
}
