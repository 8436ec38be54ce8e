"""Small apps that the tests serve with real squall processes."""
