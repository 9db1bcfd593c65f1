"""Pure status builders: observed children in, status and events out."""
