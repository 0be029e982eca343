//! The bearer security scheme of every authenticated route (contract section 3.5), as a
//! poem-openapi `SecurityScheme` so that it is in the OpenAPI document.
//!
//! How a token is judged (local JWT verification against a JWKS, or introspection at .NET)
//! is behind the [`Authenticator`] trait, installed once as request data by the application.

use std::sync::Arc;

use futures::future::BoxFuture;
use poem::Request;
use poem_openapi::auth::Bearer;
use poem_openapi::SecurityScheme;

use super::context::RequestContext;
use super::problem::Problem;

/// Who is calling, as .NET's token says.
#[derive(Clone)]
pub struct Caller {
    /// `sub`: the user id. Events are attributed to it, never to a body field.
    pub user_id: String,
    /// `role` claim (a `UserRole` string), when present.
    pub role: Option<String>,
    /// `sid`: the session id.
    pub session_id: Option<String>,
    /// `age_group` claim, when present.
    pub age_group: Option<String>,
    /// The access token itself, forwarded as `Authorization` on calls to .NET made for this
    /// caller. Never logged: `Debug` omits it.
    pub token: String,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .field("session_id", &self.session_id)
            .finish_non_exhaustive()
    }
}

/// Judges an access token: `Ok(Caller)`, or a problem (401 `unauthorized`; 503
/// `upstream_unavailable` when the judgement cannot be made, never a misleading 401).
/// `ctx` is the request's context, so that a call to .NET made to judge the token
/// (introspection, a JWKS fetch) carries the request's id and trace.
pub trait Authenticator: Send + Sync {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        ctx: Option<&'a RequestContext>,
    ) -> BoxFuture<'a, Result<Caller, Problem>>;
}

/// Installed as request data by the application.
pub type SharedAuthenticator = Arc<dyn Authenticator>;

/// `Authorization: Bearer <access token>` issued by .NET.
#[derive(SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "check_bearer")]
pub struct BearerAuth(pub Caller);

async fn check_bearer(req: &Request, bearer: Bearer) -> poem::Result<Caller> {
    let Some(authenticator) = req.data::<SharedAuthenticator>() else {
        return Err(Problem::internal().into());
    };
    let ctx = req.data::<Arc<RequestContext>>().map(|ctx| &**ctx);
    authenticator
        .authenticate(&bearer.token, ctx)
        .await
        .map_err(poem::Error::from)
}
