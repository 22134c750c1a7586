//! `gateway token ...` as an operator runs it: the real binary, a store on
//! disk, and the library's verification reading what the CLI wrote.

use std::process::{Command, Output};

use gateway::{
    tokens::{Refusal, TokenStore},
    unix_now as now,
};
use gateway_tests::daemon::{gateway_bin, token_credentials};

fn token(store: &std::path::Path, args: &[&str]) -> Output {
    Command::new(gateway_bin())
        .arg("token")
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("run gateway")
}

#[test]
fn create_list_rotate_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("tokens.json");

    let (id, secret) = token_credentials(&token(
        &store,
        &["create", "--name", "ci-bot", "--duration", "30days"],
    ));
    let stored = TokenStore::open(&store).unwrap();
    let t = stored
        .verify(&id, &secret, now())
        .expect("the printed secret verifies");
    assert_eq!(t.name, "ci-bot");
    assert!(t.expires_at.abs_diff(now() + 30 * 86400) < 60);
    assert!(!std::fs::read_to_string(&store).unwrap().contains(&secret));

    let list = token(&store, &["list"]);
    let listed = String::from_utf8_lossy(&list.stdout);
    assert!(listed.contains("ci-bot") && listed.contains(&id) && listed.contains("active"));
    assert!(!listed.contains(&secret), "list never shows secrets");

    let (same_id, new_secret) =
        token_credentials(&token(&store, &["rotate", "ci-bot", "--grace", "0s"]));
    assert_eq!(same_id, id);
    let stored = TokenStore::open(&store).unwrap();
    assert_eq!(
        stored.verify(&id, &secret, now()).unwrap_err(),
        Refusal::WrongSecret
    );
    assert!(stored.verify(&id, &new_secret, now()).is_ok());

    let out = token(&store, &["revoke", &id]);
    assert!(out.status.success());
    let stored = TokenStore::open(&store).unwrap();
    assert_eq!(
        stored.verify(&id, &new_secret, now()).unwrap_err(),
        Refusal::Revoked
    );

    let again = token(&store, &["revoke", "ci-bot"]);
    assert_eq!(again.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no service token"));
    let bad = token(&store, &["create", "--name", "bad name"]);
    assert_eq!(bad.status.code(), Some(64));
}
