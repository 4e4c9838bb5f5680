"""Object storage and the protocols on it: `storage` (URLs, listings, markers, atomic and exclusive writes),
`commit` (unit files made visible atomically, publish), `lease` (leases with an expiry), `fingerprints`
(what produced an output), `secrets` (credentials masked wherever text leaves the process)."""
