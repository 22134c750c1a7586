//! Requests crafted byte by byte over real TLS: path tricks against a
//! path-scoped app, host and server-name disagreements, and framing the
//! gateway must refuse (reliability checklist PATH, HOST, SMUG, HDR).

use gateway_tests::gateway::{AUD, Harness, OPEN_POLICY};

/// `/` is public (Bypass); `/admin` is a separate, case-insensitive app
/// that only alice may use.
fn start() -> Harness {
    let mut h = Harness::new();
    let config = h.base_config()
        + &h.app(
            "public",
            "app.test",
            "/",
            "",
            OPEN_POLICY,
        )
        + &h.app(
            "admin",
            "app.test",
            "/admin",
            &format!("aud = \"{AUD}\"\ncase_insensitive_paths = true"),
            "[[app.policy]]\nname = \"alice\"\naction = \"allow\"\ninclude = [{ email = \"alice@corp.example\" }]\n",
        )
        + &h.app(
            "other",
            "other.test",
            "/",
            "",
            OPEN_POLICY,
        );
    h.start(&config);
    h
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

fn get(h: &Harness, target: &str) -> String {
    h.raw(
        "app.test",
        format!("GET {target} HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n").as_bytes(),
    )
}

#[test]
fn paths_are_normalized_once_and_the_upstream_sees_what_the_policy_saw() {
    let h = start();
    // Reaches the admin app (and is refused there without credentials), or
    // is refused outright; never the public app's upstream.
    let to_admin = [
        "/admin",
        "/ADMIN",
        "/Admin/x",
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin/",
        "//admin",
        "///admin",
        "/./admin",
        "/admin/.",
        "/admin;x=1",
        "/public;/../admin",
        "/%61dmin",
    ];
    let refused = [
        "/public/..%2fadmin",
        "/public/..%2Fadmin",
        "/public/..%5cadmin",
        "/admin%00",
        "/admin%20",
        "/admin%09",
        "/admin.",
        "/%c0%ae%c0%ae/admin",
        "/%ef%bc%8fadmin",
        "/..",
        "/a%zz",
    ];
    for target in to_admin {
        let before = h.upstream.count();
        let response = get(&h, target);
        assert_eq!(status(&response), 401, "{target}: {response}");
        assert_eq!(h.upstream.count(), before, "{target} reached the upstream");
    }
    for target in refused {
        let before = h.upstream.count();
        let response = get(&h, target);
        assert_eq!(status(&response), 400, "{target}: {response}");
        assert_eq!(h.upstream.count(), before, "{target} reached the upstream");
    }
    // Public paths go through, and the upstream gets the normalized path.
    for (target, forwarded) in [
        ("/public/x?q=/admin", "/public/x?q=/admin"),
        ("/public//x/./y/../z", "/public/x/z"),
        ("/%70ublic/caf%c3%a9", "/public/caf%C3%A9"),
        ("/administrator", "/administrator"),
    ] {
        let response = get(&h, target);
        assert_eq!(status(&response), 200, "{target}: {response}");
        assert_eq!(h.upstream.last().target, forwarded, "{target}");
    }
    // Bypass decisions are recorded too (the writer may lag a little).
    h.wait_for_audit(|events| events.iter().filter(|e| e["decision"] == "bypass").count() >= 4);
}

#[test]
fn host_and_server_name_must_agree_and_be_unambiguous() {
    let h = start();
    let before = h.upstream.count();
    let cases: [(&str, &str, u16); 8] = [
        // SNI names one configured host, Host another.
        (
            "app.test",
            "GET / HTTP/1.1\r\nhost: other.test\r\n\r\n",
            421,
        ),
        ("app.test", "GET / HTTP/1.1\r\n\r\n", 400),
        (
            "app.test",
            "GET / HTTP/1.1\r\nhost: app.test\r\nhost: app.test\r\n\r\n",
            400,
        ),
        (
            "app.test",
            "GET / HTTP/1.1\r\nhost: user@app.test\r\n\r\n",
            400,
        ),
        ("app.test", "GET / HTTP/1.1\r\nhost: app..test\r\n\r\n", 400),
        // Absolute form naming another host than Host.
        (
            "app.test",
            "GET https://other.test/ HTTP/1.1\r\nhost: app.test\r\n\r\n",
            400,
        ),
        // Unknown host: no default app.
        (
            "app.test",
            "GET / HTTP/1.1\r\nhost: unknown.test\r\n\r\n",
            421,
        ),
        (
            "other.test",
            "GET /admin HTTP/1.1\r\nhost: other.test\r\n\r\n",
            200,
        ),
    ];
    for (sni, request, want) in cases {
        let head = request
            .strip_suffix("\r\n")
            .expect("ends with an empty line");
        let response = h.raw(sni, format!("{head}connection: close\r\n\r\n").as_bytes());
        assert_eq!(status(&response), want, "{request:?}: {response}");
    }
    assert_eq!(
        h.upstream.count(),
        before + 1,
        "only the last request is forwarded"
    );
    // Case and a trailing dot are the same host.
    let response = h.raw(
        "app.test",
        b"GET /public HTTP/1.1\r\nhost: APP.test.:443\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status(&response), 200, "{response}");
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let h = start();
    // CL.TE and TE.CL: RFC 9112 §6.1 lets a server frame by
    // Transfer-Encoding and then close. Either way the smuggled second
    // request is never answered and the upstream never sees both headers.
    for request in [
        "POST /public HTTP/1.1\r\nhost: app.test\r\ncontent-length: 6\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nhost: app.test\r\n\r\n",
        "POST /public HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked\r\ncontent-length: 6\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nhost: app.test\r\n\r\n",
    ] {
        let response = h.raw("app.test", request.as_bytes());
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "{request:?}: {response}"
        );
        assert!(response.contains("connection: close"), "{response}");
        if status(&response) == 200 {
            let seen = h.upstream.last();
            assert!(
                seen.values("content-length").len() + seen.values("transfer-encoding").len() <= 1,
                "{:?}",
                seen.headers
            );
        } else {
            assert_eq!(status(&response), 400, "{response}");
        }
    }
    let before = h.upstream.count();
    let smuggled = [
        // Malformed Transfer-Encoding and Content-Length.
        "POST /public HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
        "POST /public HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "POST /public HTTP/1.1\r\nhost: app.test\r\ncontent-length: +5\r\n\r\nhello",
        "POST /public HTTP/1.1\r\nhost: app.test\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        "POST /public HTTP/1.1\r\nhost: app.test\r\ncontent-length: 0x5\r\n\r\nhello",
        // Whitespace before the colon; obs-fold.
        "GET /public HTTP/1.1\r\nhost: app.test\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n",
        "GET /public HTTP/1.1\r\nhost: app.test\r\nx-a: 1\r\n b\r\n\r\n",
        // Bad request lines.
        "GET public HTTP/1.1\r\nhost: app.test\r\n\r\n",
        "GET /public\r\nhost: app.test\r\n\r\n",
    ];
    for request in smuggled {
        let response = h.raw("app.test", request.as_bytes());
        assert_eq!(status(&response), 400, "{request:?}: {response}");
        // One response, then the connection is closed: the smuggled second
        // request is never answered.
        assert_eq!(
            response.matches("HTTP/1.1 ").count(),
            1,
            "{request:?}: {response}"
        );
    }
    assert_eq!(
        h.upstream.count(),
        before,
        "a malformed request reached the upstream"
    );

    // Oversized heads are refused.
    let huge = format!(
        "GET /public HTTP/1.1\r\nhost: app.test\r\nx-big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let response = h.raw("app.test", huge.as_bytes());
    assert_eq!(
        status(&response),
        431,
        "{}",
        &response[..response.len().min(200)]
    );
    let many: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let response = h.raw(
        "app.test",
        format!("GET /public HTTP/1.1\r\nhost: app.test\r\n{many}\r\n").as_bytes(),
    );
    assert_eq!(status(&response), 431, "{response}");
    assert_eq!(h.upstream.count(), before);

    // Pipelined requests are each decided on their own: the second one,
    // for the admin app, is refused although the first was let through.
    let response = h.raw(
        "app.test",
        b"GET /public HTTP/1.1\r\nhost: app.test\r\n\r\nGET /admin HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n",
    );
    let statuses: Vec<u16> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| status(&response[i..]))
        .collect();
    assert_eq!(statuses, vec![200, 401], "{response}");
    assert_eq!(h.upstream.count(), before + 1);
}

#[test]
fn websocket_upgrades_tunnel_only_after_the_upstream_agrees() {
    let h = start();
    let upgrade = "GET /public/ws HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";
    // A raw TLS session: send the upgrade, then bytes that must come back.
    let response = h.raw("app.test", format!("{upgrade}echo-me").as_bytes());
    assert_eq!(status(&response), 101, "{response}");
    assert!(response.ends_with("echo-me"), "{response:?}");
    let seen = h.upstream.last();
    assert_eq!(seen.one("upgrade"), "websocket");

    // The upstream answers 200: no tunnel, and the extra bytes are a
    // (malformed) next request, not tunnelled data.
    let fake = upgrade.replace("/public/ws", "/public/fake-upgrade");
    let response = h.raw(
        "app.test",
        format!("{fake}GET /admin HTTP/1.1\r\nhost: app.test\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    );
    let statuses: Vec<u16> = response
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| status(&response[i..]))
        .collect();
    assert_eq!(statuses, vec![200, 401], "{response}");

    // h2c upgrades are not passed on.
    let response = h.raw(
        "app.test",
        b"GET /public HTTP/1.1\r\nhost: app.test\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAARAAAAAAAIAAAAA\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(status(&response), 200, "{response}");
    let seen = h.upstream.last();
    assert!(seen.values("upgrade").is_empty() && seen.values("http2-settings").is_empty());
}
