//! The page: one HTML file, its script and its style sheet, embedded in the binary (nothing is
//! fetched from anywhere else; the charts are drawn by the script as SVG).

pub struct Asset {
    pub kind: &'static str,
    pub body: &'static str,
}

/// The embedded file served at `path`, if any.
pub fn get(path: &str) -> Option<Asset> {
    let (kind, body) = match path {
        "/" | "/index.html" => (
            "text/html; charset=utf-8",
            include_str!("assets/index.html"),
        ),
        "/app.js" => (
            "text/javascript; charset=utf-8",
            include_str!("assets/app.js"),
        ),
        "/app.css" => ("text/css; charset=utf-8", include_str!("assets/app.css")),
        _ => return None,
    };
    Some(Asset { kind, body })
}
