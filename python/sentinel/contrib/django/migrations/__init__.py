"""One Django migration per SQL migration file of Sentinel (``sql/migrations/NNNN_*.sql``), same names, same order."""
