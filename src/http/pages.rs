//! The account and console pages: plain HTML/CSS/JS from `dashboards/`, embedded at build time
//! and served with a strict Content-Security-Policy (scripts and styles from this origin only,
//! no inline code, no framing), so a value that slipped into the markup still could not run.

use super::AppState;
use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
     img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/account/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../dashboards/account/index.html"),
    },
    Asset {
        path: "/account/account.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboards/account/account.js"),
    },
    Asset {
        path: "/console/",
        content_type: "text/html; charset=utf-8",
        body: include_str!("../../dashboards/console/index.html"),
    },
    Asset {
        path: "/console/console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboards/console/console.js"),
    },
    Asset {
        path: "/console/draw.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboards/console/draw.js"),
    },
    // Natural Earth 1:110m land outlines (public domain) as one SVG path: the console's map.
    Asset {
        path: "/console/world.json",
        content_type: "application/json",
        body: include_str!("../../dashboards/console/world.json"),
    },
    Asset {
        path: "/shared/api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("../../dashboards/shared/api.js"),
    },
    Asset {
        path: "/shared/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("../../dashboards/shared/style.css"),
    },
];

pub fn router() -> Router<AppState> {
    let mut router = Router::new()
        .route(
            "/account",
            get(|| async { Redirect::permanent("/account/") }),
        )
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        );
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { serve(asset) }));
    }
    router
}

fn serve(asset: &'static Asset) -> Response {
    let mut response = asset.body.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // Small and versioned with the binary: always revalidate, so an upgrade shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
