//! The connection pool: `deadpool-postgres` over `tokio-postgres`, every connection with
//! the store's `search_path` and an `application_name`.

use std::str::FromStr as _;

use crownest_core::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::PostgresConfig;

/// Builds the pool (no connection is opened yet).
pub(crate) fn build(config: &PostgresConfig) -> Result<Pool> {
    let mut pg = tokio_postgres::Config::from_str(&config.url)
        .map_err(|e| Error::invalid("url", format!("not a PostgreSQL connection string ({e})")))?;
    pg.connect_timeout(config.connect_timeout);
    if pg.get_application_name().is_none() {
        pg.application_name("crownest");
    }
    if let Some(schema) = config.checked_schema()? {
        // Only the store's schema: every unqualified name (tables, and the migration's
        // CREATE TABLE) resolves there; built-in functions live in pg_catalog, always searched.
        let options = match pg.get_options() {
            Some(o) if !o.is_empty() => format!("{o} -c search_path={schema}"),
            _ => format!("-c search_path={schema}"),
        };
        pg.options(options);
    }
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            // `Fast` trusts a connection that came back healthy; a broken one is reported
            // by its next query and dropped then.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .wait_timeout(Some(config.pool_wait_timeout))
        .create_timeout(Some(config.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| Error::store("building the connection pool", e))
}
