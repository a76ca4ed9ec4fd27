"""Records -> summary, leaderboard (Markdown, HTML), plots, model cards, the regression check, export."""
