"""The Gradio app: chat, arena (blind battles, votes, leaderboard) and scoring tabs."""
