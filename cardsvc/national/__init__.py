"""The national interface gateway: the medical-insurance platform's interface for designated
facilities (9001 sign-in, 1101, 2201-2208, 2301-2305/2401/2402, 2601, 3201/3202,
9101/9102) over cardsvc's own services, so an existing HIS settles without being rewritten."""
