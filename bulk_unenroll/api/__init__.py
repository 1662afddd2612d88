"""The LeadLex API: the client, its connection pools, and the pace every call keeps."""
