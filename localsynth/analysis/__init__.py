"""Measures of the data: embeddings, diversity, similarity to real, instance- and task-level subjectivity."""
