"""A small MCP server of our own (stdio, on the `mcp` 2.x SDK that mcp-server-time brings):
its tool `add_tool` adds a tool `late` and sends notifications/tools/list_changed."""
from mcp.server.mcpserver import Context, MCPServer

mcp = MCPServer("changing")


@mcp.tool()
async def add_tool(ctx: Context) -> str:
    """Adds the tool `late`."""

    def late() -> str:
        """A tool added later."""
        return "late tool answered"

    mcp.add_tool(late, name="late")
    await ctx.session.send_tool_list_changed()
    return "added"


if __name__ == "__main__":
    mcp.run()
