-- The users who are in an org, indexed on their own.
--
-- The group commit's conditional update (`store/ledger/postgres.rs`, `spend_fitting`) spends
-- only for users in no org, and asks for each debit whether its user is in one. Through the
-- primary key that costs a probe of the whole `users` index and a read of the row; through this
-- index, which holds only the members of orgs, it is a probe of a small index and no row.
-- Measured on the benchmark's database (10,000 users, none in an org), the update of 400 users'
-- quota rows took 5.5-7.5 ms instead of 7.7-13.2 ms.
CREATE INDEX users_in_orgs ON users (id) WHERE org_id IS NOT NULL;
