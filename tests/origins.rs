//! The cross-origin policy as HTTP sees it (the browser suite,
//! `tests/browser.rs`, shows what pages on other origins then can do):
//! by default any origin may call the edge and preflights are answered;
//! with an allow-list, listed origins get their own origin back with
//! credentials, and a foreign `Origin` is refused with 403 on REST,
//! preflights, WebSocket upgrades and Socket.IO alike, while clients that
//! send no `Origin` (curl, phones) and the edge's own pages pass.

mod support;

use support::{Switchboard, WAIT};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PAGE: &str = "http://localhost:3000";
const FOREIGN: &str = "http://evil.example";

async fn request(
    method: reqwest::Method,
    url: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new().request(method, url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    tokio::time::timeout(WAIT, request.send())
        .await
        .expect("timed out")
        .expect("http request")
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// The HTTP status of a WebSocket upgrade to `url` sent with `origin`.
async fn upgrade_status(url: &str, origin: Option<&str>) -> u16 {
    let mut request = url.into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("timed out")
    {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(error) => panic!("upgrade failed: {error}"),
    }
}

#[tokio::test]
async fn by_default_any_origin_may_call() {
    let node = Switchboard::all(None, &[]);
    node.wait_logged("cross-origin: any origin may call this edge");
    let sessions = format!("{}/sessions", node.http());

    let read = request(reqwest::Method::GET, &sessions, &[("origin", PAGE)]).await;
    assert_eq!(read.status(), 200);
    assert_eq!(header(&read, "access-control-allow-origin"), Some("*"));

    // What a page's fetch with a JSON body and a bearer token asks first.
    let preflight = request(
        reqwest::Method::OPTIONS,
        &format!("{}/api/events/broadcast", node.http()),
        &[
            ("origin", PAGE),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type",
            ),
        ],
    )
    .await;
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(header(&preflight, "access-control-allow-origin"), Some("*"));
    let methods = header(&preflight, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = header(&preflight, "access-control-allow-headers").unwrap_or_default();
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{allowed}"
    );

    assert_eq!(upgrade_status(&node.ws("/ws/ui"), Some(FOREIGN)).await, 101);
}

#[tokio::test]
async fn an_allow_list_serves_its_origins_and_refuses_the_others() {
    let node = Switchboard::all(
        None,
        &["--allowed-origins", &format!("{PAGE},https://dash.example")],
    );
    node.wait_logged("cross-origin: only these origins may call this edge");
    let sessions = format!("{}/sessions", node.http());

    let listed = request(reqwest::Method::GET, &sessions, &[("origin", PAGE)]).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(header(&listed, "access-control-allow-origin"), Some(PAGE));
    assert_eq!(
        header(&listed, "access-control-allow-credentials"),
        Some("true")
    );
    assert!(header(&listed, "vary").is_some_and(|vary| vary.contains("origin")));

    let foreign = request(reqwest::Method::GET, &sessions, &[("origin", FOREIGN)]).await;
    assert_eq!(foreign.status(), 403);
    assert_eq!(header(&foreign, "access-control-allow-origin"), None);
    let body: serde_json::Value = foreign.json().await.unwrap();
    assert_eq!(body["code"], "forbidden_origin");
    node.wait_logged("request from a foreign origin refused");

    let preflight = request(
        reqwest::Method::OPTIONS,
        &sessions,
        &[
            ("origin", FOREIGN),
            ("access-control-request-method", "GET"),
        ],
    )
    .await;
    assert_eq!(preflight.status(), 403);

    // WebSocket upgrades, which CORS does not cover, and Socket.IO.
    let ui = node.ws("/ws/ui");
    assert_eq!(upgrade_status(&ui, Some(FOREIGN)).await, 403);
    assert_eq!(upgrade_status(&ui, Some(PAGE)).await, 101);
    assert_eq!(
        upgrade_status(&ui, None).await,
        101,
        "no Origin: not a browser"
    );
    let own = node.http();
    assert_eq!(
        upgrade_status(&ui, Some(&own)).await,
        101,
        "the edge's own pages"
    );
    let polling = format!("{}/socket.io/?EIO=4&transport=polling", node.http());
    let refused = request(reqwest::Method::GET, &polling, &[("origin", FOREIGN)]).await;
    assert_eq!(refused.status(), 403);
    let served = request(reqwest::Method::GET, &polling, &[("origin", PAGE)]).await;
    assert_eq!(served.status(), 200);
    assert_eq!(header(&served, "access-control-allow-origin"), Some(PAGE));
}

#[tokio::test]
async fn an_origin_that_is_not_one_stops_the_edge_at_start() {
    let node = Switchboard::all(None, &["--allowed-origins", "localhost:3000"]);
    node.wait_logged("is not of the form scheme://host[:port]");
}
