"""Cloud aggregator: federated averaging of edge updates into versioned global models."""
