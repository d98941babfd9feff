//! `/v1/admin/`: policies and API keys in the catalog, behind a bearer token compared in constant time.
//!
//! Without `admin.token` (or without Postgres) every admin route answers 404:
//! the API is off, not open. A missing or wrong token is a 401 that says no
//! more, counted in `slidegate_auth_failures_total{endpoint="admin"}`. Every
//! write is committed in Postgres before it is acknowledged; when Postgres
//! cannot be reached it answers 503 `catalog_unavailable` and nothing changed.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::HttpState;
use super::check::require_json;
use super::documents::{NewKeyDocument, OverridesDocument, PolicyDocument};
use super::error::ApiError;
use slidegate_catalog::Catalog;
use slidegate_catalog::model::ApiKeyRecord;
use slidegate_core::Store;

/// Largest admin request body: a policy with a long description, or a key's overrides.
const MAX_ADMIN_BODY_BYTES: usize = 64 * 1024;

/// The admin token as the server keeps it: its SHA-256 digest. Comparing
/// digests in constant time hides the token's length as well as its bytes.
#[derive(Clone)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// Registers the admin routes (under `/v1/admin`).
pub fn routes<S: Store>(config: &mut web::ServiceConfig) {
    config.service(
        web::scope("/v1/admin")
            .service(
                web::resource("/policies")
                    .route(web::get().to(list_policies::<S>))
                    .route(web::post().to(create_policy::<S>))
                    .default_service(web::to(super::method_not_allowed)),
            )
            .service(
                web::resource("/policies/{name}")
                    .route(web::get().to(get_policy::<S>))
                    .route(web::put().to(replace_policy::<S>))
                    .route(web::delete().to(delete_policy::<S>))
                    .default_service(web::to(super::method_not_allowed)),
            )
            .service(
                web::resource("/keys")
                    .route(web::get().to(list_keys::<S>))
                    .route(web::post().to(create_key::<S>))
                    .default_service(web::to(super::method_not_allowed)),
            )
            .service(
                web::resource("/keys/{id}/revoke")
                    .route(web::post().to(revoke_key::<S>))
                    .default_service(web::to(super::method_not_allowed)),
            )
            .service(
                web::resource("/keys/{id}/overrides")
                    .route(web::put().to(set_overrides::<S>))
                    .default_service(web::to(super::method_not_allowed)),
            ),
    );
}

/// The catalog, if the admin API is on and the request carries the token.
fn authorize<'s, S: Store>(
    request: &HttpRequest,
    state: &'s HttpState<S>,
) -> Result<&'s Catalog, ApiError> {
    let (Some(token), Some(catalog)) = (&state.admin_token, &state.catalog) else {
        return Err(ApiError::NotFound);
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match presented {
        Some(presented) if token.matches(presented) => Ok(catalog),
        _ => {
            state.metrics.auth_failure("admin");
            Err(ApiError::Unauthorized)
        }
    }
}

/// Applies the catalog as it is now on this replica before answering, so a
/// client that writes and then checks through the same replica sees its
/// write. Other replicas get it through the notification.
async fn refresh<S: Store>(state: &HttpState<S>, catalog: &Catalog) {
    match catalog.load().await {
        Ok(update) => {
            catalog.apply(update, |bundle| state.limiter.replace(bundle));
        }
        Err(error) => tracing::debug!(%error, "reload after an admin write failed"),
    }
}

async fn read_json<T: DeserializeOwned>(
    request: &HttpRequest,
    body: web::Payload,
) -> Result<T, ApiError> {
    require_json(request)?;
    let bytes = body
        .to_bytes_limited(MAX_ADMIN_BODY_BYTES)
        .await
        .map_err(|_| ApiError::PayloadTooLarge {
            limit: MAX_ADMIN_BODY_BYTES,
        })?
        .map_err(|_| ApiError::UnreadableBody)?;
    serde_json::from_slice(&bytes).map_err(|error| {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => ApiError::InvalidRequest(error.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::MalformedJson(error.to_string())
            }
        }
    })
}

fn key_id(path: &str) -> Result<i64, ApiError> {
    path.parse().map_err(|_| ApiError::NotFound)
}

async fn list_policies<S: Store>(
    request: HttpRequest,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    let policies = catalog.list_policies().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "policies": policies })))
}

async fn get_policy<S: Store>(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    Ok(HttpResponse::Ok().json(catalog.get_policy(&path).await?))
}

async fn create_policy<S: Store>(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    let document: PolicyDocument = read_json(&request, body).await?;
    let valid = document
        .validate(None)
        .map_err(|invalid| ApiError::Catalog(invalid.into()))?;
    let record = catalog.create_policy(valid).await?;
    tracing::info!(policy = %record.name, version = record.version, "policy created through the admin API");
    refresh(&state, catalog).await;
    Ok(HttpResponse::Created()
        .insert_header((
            header::LOCATION,
            format!("/v1/admin/policies/{}", record.name),
        ))
        .json(record))
}

async fn replace_policy<S: Store>(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    let document: PolicyDocument = read_json(&request, body).await?;
    let valid = document
        .validate(Some(&path))
        .map_err(|invalid| ApiError::Catalog(invalid.into()))?;
    let record = catalog.replace_policy(valid).await?;
    tracing::info!(policy = %record.name, version = record.version, "policy replaced through the admin API");
    refresh(&state, catalog).await;
    Ok(HttpResponse::Ok().json(record))
}

async fn delete_policy<S: Store>(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    catalog.delete_policy(&path).await?;
    tracing::info!(policy = %path.as_str(), "policy deleted through the admin API");
    refresh(&state, catalog).await;
    Ok(HttpResponse::NoContent().finish())
}

async fn list_keys<S: Store>(
    request: HttpRequest,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    let keys = catalog.list_keys().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "keys": keys })))
}

/// The one response that ever contains the key.
#[derive(Serialize)]
struct CreatedKey {
    key: String,
    #[serde(flatten)]
    record: ApiKeyRecord,
}

async fn create_key<S: Store>(
    request: HttpRequest,
    body: web::Payload,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    let document: NewKeyDocument = read_json(&request, body).await?;
    let tenant = document
        .tenant()
        .map_err(|invalid| ApiError::Catalog(invalid.into()))?;
    let (record, key) = catalog.create_key(tenant, &document.overrides).await?;
    // The id and display prefix identify the key; the key itself is never logged.
    tracing::info!(id = record.id, prefix = %record.prefix, tenant = %record.tenant, "API key created through the admin API");
    refresh(&state, catalog).await;
    Ok(HttpResponse::Created()
        // The body holds a secret: no cache may keep it.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(CreatedKey {
            key: key.plaintext,
            record,
        }))
}

async fn revoke_key<S: Store>(
    request: HttpRequest,
    path: web::Path<String>,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    let record = catalog.revoke_key(key_id(&path)?).await?;
    tracing::info!(id = record.id, prefix = %record.prefix, tenant = %record.tenant, "API key revoked through the admin API");
    refresh(&state, catalog).await;
    Ok(HttpResponse::Ok().json(record))
}

async fn set_overrides<S: Store>(
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Payload,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let catalog = authorize(&request, &state)?;
    let id = key_id(&path)?;
    let document: OverridesDocument = read_json(&request, body).await?;
    let record = catalog.set_overrides(id, &document.overrides).await?;
    tracing::info!(id = record.id, tenant = %record.tenant, "API key overrides replaced through the admin API");
    refresh(&state, catalog).await;
    Ok(HttpResponse::Ok().json(record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_admin_token_matches_only_itself_and_never_prints() {
        let token = AdminToken::new("correct horse battery staple");
        assert!(token.matches("correct horse battery staple"));
        assert!(!token.matches("correct horse battery stapl"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(..)");
    }
}
