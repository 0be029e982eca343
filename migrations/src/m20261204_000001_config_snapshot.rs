//! `config_snapshot`: one row per cached document (today only `config`), holding the last
//! good body fetched from .NET and when it was fetched.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ConfigSnapshot {
    Table,
    Name,
    Body,
    FetchedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConfigSnapshot::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(ConfigSnapshot::Name)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ConfigSnapshot::Body).text().not_null())
                    // Unix milliseconds: portable across PostgreSQL and SQLite.
                    .col(
                        ColumnDef::new(ConfigSnapshot::FetchedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConfigSnapshot::Table).to_owned())
            .await
    }
}
