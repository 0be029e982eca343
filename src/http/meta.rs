//! `GET /meta/enums`: the contract's enumerations, in the contract's order (section 4).

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};

use crate::domain::{AccountStatus, AgeGroup, UserRole};
use crate::http::problem::ProblemResponse;
use crate::http::ApiTags;

/// The closed sets of strings clients may see in user objects.
#[derive(Object)]
pub struct Enums {
    #[oai(rename = "AccountStatus")]
    account_status: Vec<AccountStatus>,
    #[oai(rename = "UserRole")]
    user_role: Vec<UserRole>,
    #[oai(rename = "AgeGroup")]
    age_group: Vec<AgeGroup>,
}

#[derive(ApiResponse)]
#[oai(
    header(
        name = "X-Contract-Version",
        ty = "String",
        description = "Always `1`."
    ),
    header(
        name = "X-Request-Id",
        ty = "String",
        description = "The client's request id, or a new UUID."
    )
)]
pub enum EnumsResponse {
    /// The enumerations.
    #[oai(status = 200)]
    Ok(Json<Enums>),
}

pub struct MetaApi;

#[OpenApi(tag = "ApiTags::Meta")]
impl MetaApi {
    /// The contract's enumerations (public).
    #[oai(path = "/meta/enums", method = "get", operation_id = "getEnums")]
    async fn enums(&self) -> Result<EnumsResponse, ProblemResponse> {
        Ok(EnumsResponse::Ok(Json(Enums {
            account_status: AccountStatus::ALL.to_vec(),
            user_role: UserRole::ALL.to_vec(),
            age_group: AgeGroup::ALL.to_vec(),
        })))
    }
}
