"""What crosses the wire: the message contract, its guards, and the byte and metric meters."""
