//! RFC 9457 problem details, the shape of every error the emulator answers.

use poem::http::StatusCode;
use poem::Response;

/// An error answer: `application/problem+json` with `type title status detail code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
}

impl Problem {
    pub fn new(status: u16, code: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            status,
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(400, "invalid_request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(401, "unauthorized", detail)
    }

    pub fn body(&self) -> serde_json::Value {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        serde_json::json!({
            "type": format!("https://dotnet.local/problems/{}", self.code.replace('_', "-")),
            "title": status.canonical_reason().unwrap_or("Error"),
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        })
    }

    pub fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = Response::builder()
            .status(status)
            .content_type("application/problem+json");
        if status == StatusCode::UNAUTHORIZED {
            // What ASP.NET's JwtBearer handler adds; harmless on the other 401s.
            builder = builder.header("WWW-Authenticate", "Bearer");
        }
        builder.body(self.body().to_string())
    }
}

/// A JSON response with `status`.
pub fn json(status: u16, value: &serde_json::Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
        .content_type("application/json")
        .body(value.to_string())
}
