"""`./inv roll`: update a tier host by host (image, or only the reboots patches ask for) without taking it out of
service: plan (order, batches, refusals), runtime (HAProxy on every LB, over a swappable transport), state (resume),
steps (the phases of one host), progress (the live view and the summary), probe (a request loop), cli."""
