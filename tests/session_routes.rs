//! Who may see and end sessions over REST. With a JWT key configured, the
//! registry holds users' alerts and statistics connections, so `/sessions`
//! and `/sessions/{id}` (GET, DELETE) are an admin's: nobody else can end a
//! user's alerts socket, or list who is connected. Without a key they stay
//! open as seed 000 has them, for realtime sessions only, and show no user
//! ids.

mod support;

use serde_json::{Value, json};
use support::{Client, Switchboard, WAIT, realtime_session};

const SECRET: &str = "session-routes-secret-0123456789abcdef";

fn user(sub: &str) -> String {
    support::tokens::user_token(SECRET, sub)
}

fn admin() -> String {
    support::tokens::admin_token(SECRET)
}

async fn call(method: reqwest::Method, url: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = tokio::time::timeout(WAIT, request.send())
        .await
        .expect("timed out")
        .expect("http request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn with_a_key_only_an_admin_sees_or_ends_sessions() {
    let node = Switchboard::all_with_env(None, &[], &[("SWITCHBOARD_JWT_SECRET", SECRET)]);
    let alice = user("alice");
    let mut alerts = Client::connect(&node.ws(&format!("/ws/alerts/alice?token={alice}"))).await;
    let connection_id = alerts.expect("connected").await["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let list = format!("{}/sessions", node.http());
    let one = format!("{}/sessions/{connection_id}", node.http());

    for (who, token, status) in [
        ("anonymous", None, 401),
        ("a user", Some(alice.as_str()), 403),
    ] {
        assert_eq!(
            call(reqwest::Method::GET, &list, token).await.0,
            status,
            "{who} lists"
        );
        assert_eq!(
            call(reqwest::Method::GET, &one, token).await.0,
            status,
            "{who} reads"
        );
        let (code, body) = call(reqwest::Method::DELETE, &one, token).await;
        assert_eq!(code, status, "{who} ends alice's alerts socket: {body}");
    }
    // Her socket is untouched.
    alerts.call(json!({"type": "ping"}), "pong").await;

    let admin = admin();
    let (status, listed) = call(reqwest::Method::GET, &list, Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(listed["sessions"][0]["user_id"], "alice", "{listed}");
    assert_eq!(listed["sessions"][0]["kind"], "alerts", "{listed}");
    let (status, _) = call(reqwest::Method::DELETE, &one, Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(alerts.expect_close().await.code, 1000);
}

#[tokio::test]
async fn without_a_key_realtime_sessions_are_open_and_show_no_user() {
    let node = Switchboard::all(None, &[]);
    let mut labelled = Client::connect(&node.ws("/ws/realtime?user_id=alice")).await;
    let session_id = labelled.expect("session_started").await["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_other, _) = realtime_session(&node).await;

    let (status, listed) = call(
        reqwest::Method::GET,
        &format!("{}/sessions", node.http()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(listed["active_sessions"], 2);
    for session in listed["sessions"].as_array().unwrap() {
        assert_eq!(session["kind"], "realtime");
        assert!(
            session.get("user_id").is_none(),
            "no user ids for anonymous callers: {session}"
        );
    }
    let one = format!("{}/sessions/{session_id}", node.http());
    let (status, shown) = call(reqwest::Method::GET, &one, None).await;
    assert_eq!(status, 200);
    assert!(shown.get("user_id").is_none(), "{shown}");
    let (status, _) = call(reqwest::Method::DELETE, &one, None).await;
    assert_eq!(status, 200, "seed 000: anyone may end a realtime session");
    assert_eq!(
        labelled.expect("session_terminated").await["session_id"],
        session_id.as_str()
    );
}
