-- Version 7 on PostgreSQL indexes the users who are in an org, for the group commit's
-- conditional update, which SQLite does not run; nothing changes here, and the version exists
-- so both databases carry the same ones.
SELECT 1;
