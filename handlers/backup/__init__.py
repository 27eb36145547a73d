"""The PostgreSQL backup worker: scheduled, verified dumps with retention."""
