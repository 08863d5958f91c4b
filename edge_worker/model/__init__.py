"""Stylizer models behind one small interface (:class:`edge_worker.model.base.Stylizer`)."""
