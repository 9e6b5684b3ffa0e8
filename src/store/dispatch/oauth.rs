//! OAuth clients and authorization codes, written once for both databases: every column is
//! text (the record is the domain value as JSON), so one statement text serves both, its
//! placeholders spelled by [`Stmt::bind`]. A client's secret hash is in `secrets`.

use super::dialect::{Cols, Dialect, Stmt};
use super::tables::{Tables, all, one};
use crate::domain::authorization::AuthorizationCode;
use crate::domain::client::Client;
use crate::domain::{Timestamp, format_timestamp};
use crate::store::StoreError;
use uuid::Uuid;

fn record<T: serde::de::DeserializeOwned>(r: &impl Cols) -> Result<T, StoreError> {
    serde_json::from_str(&r.text("record")?)
        .map_err(|e| StoreError::Corrupt(format!("record: {e}")))
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serializes")
}

pub async fn client_record<D: Dialect>(
    c: &mut D::Connection,
    client_id: &str,
) -> Result<Option<Client>, StoreError> {
    let mut q = Stmt::new::<D>("SELECT record FROM clients WHERE client_id = ");
    q.bind(client_id);
    one::<D, _>(c, q, record).await
}

pub async fn put_client<D: Dialect>(
    c: &mut D::Connection,
    client: &Client,
    at: Timestamp,
) -> Result<(), StoreError> {
    let mut q =
        Stmt::new::<D>("INSERT INTO clients (client_id, name, record, created_at) VALUES (");
    q.bind(client.client_id.as_str())
        .push(", ")
        .bind(client.name.as_str())
        .push(", ")
        .bind(json(client))
        .push(", ")
        .bind(format_timestamp(client.created_at.unwrap_or(at)))
        .push(
            ") ON CONFLICT (client_id) DO UPDATE SET name = excluded.name, \
             record = excluded.record",
        );
    D::execute(c, q).await?;
    Ok(())
}

pub async fn delete_client<D: Dialect>(
    c: &mut D::Connection,
    client_id: &str,
) -> Result<(), StoreError> {
    let mut q = Stmt::new::<D>("DELETE FROM clients WHERE client_id = ");
    q.bind(client_id);
    D::execute(c, q).await?;
    Ok(())
}

pub async fn authorization_code<D: Dialect>(
    c: &mut D::Connection,
    code_id: Uuid,
) -> Result<Option<AuthorizationCode>, StoreError> {
    let mut q = Stmt::new::<D>("SELECT record FROM authorization_codes WHERE code_id = ");
    q.bind(code_id.to_string());
    one::<D, _>(c, q, record).await
}

pub async fn put_authorization_code<D: Dialect>(
    c: &mut D::Connection,
    code: &AuthorizationCode,
) -> Result<(), StoreError> {
    let mut q = Stmt::new::<D>(
        "INSERT INTO authorization_codes (code_id, session_id, record, expires_at) VALUES (",
    );
    q.bind(code.code_id.to_string())
        .push(", ")
        .bind(code.session_id.to_string())
        .push(", ")
        .bind(json(code))
        .push(", ")
        .bind(format_timestamp(code.expires_at))
        .push(") ON CONFLICT (code_id) DO UPDATE SET record = excluded.record");
    D::execute(c, q).await?;
    Ok(())
}

impl<D: Dialect> Tables<D> {
    /// The client with this id and, for a confidential one, its secret's SHA-256.
    pub async fn client(
        &self,
        client_id: &str,
    ) -> Result<Option<(Client, Option<Vec<u8>>)>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let mut q = Stmt::new::<D>(
            "SELECT c.record, s.material FROM clients c LEFT JOIN secrets s \
             ON s.owner = 'client-' || c.client_id WHERE c.client_id = ",
        );
        q.bind(client_id);
        one::<D, _>(&mut c, q, |r| Ok((record(r)?, r.opt_bytes("material")?))).await
    }

    /// Every registered client, oldest first.
    pub async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        let mut c = self.pool.acquire().await?;
        let q = Stmt::new::<D>("SELECT record FROM clients ORDER BY created_at, client_id");
        all::<D, _>(&mut c, q, record).await
    }
}
