-- Version 6 on PostgreSQL rolls the hourly analytics totals up from the events, as SQLite has
-- done since version 5, so nothing changes here; the version exists so both databases carry the
-- same ones.
SELECT 1;
